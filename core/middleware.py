"""Request id: taken from ``X-Request-ID`` or generated, echoed back, and kept in a context
variable so that audit rows written anywhere during the request carry it. And the API's JSON
answer to an unhandled exception."""

import contextvars
import logging
import re
import uuid
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse

logger = logging.getLogger("django.request")

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class RequestIdMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        incoming = request.headers.get("X-Request-ID", "")
        request_id = incoming if _SAFE_ID.match(incoming) else uuid.uuid4().hex
        request.request_id = request_id  # type: ignore[attr-defined]
        token = request_id_var.set(request_id)
        try:
            response = self.get_response(request)
        finally:
            request_id_var.reset(token)
        response["X-Request-ID"] = request_id
        return response


class ApiErrorMiddleware:
    """An unhandled exception under /api/ answers a JSON 500 (with the request id to quote),
    not Django's HTML error page, even with DEBUG on. The traceback goes to the log."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not request.path.startswith("/api/"):
            return None
        from django.core.exceptions import SuspiciousOperation

        from .exceptions import error_body

        if isinstance(exception, SuspiciousOperation):  # Django's own answer is a 400 too
            return JsonResponse(error_body(400, str(exception) or "Bad request."), status=400)
        logger.error("Internal error on %s %s", request.method, request.path, exc_info=exception)
        request_id = getattr(request, "request_id", "")
        detail = f"Internal error; quote request id {request_id} when reporting it."
        return JsonResponse(error_body(500, detail), status=500)
