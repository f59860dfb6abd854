"""API errors: one JSON shape for every error under ``/api/``.

Every error body is an object with ``detail`` (a sentence for people) and ``code`` (for
programs); a validation error (400) also names each bad field, DRF's way, beside them:
``{"detail": "Invalid input.", "code": "invalid", "cidr": ["'10.0.0.300/8' is not ..."]}``.
The number import's row errors (``rows``) and a conflict's holders (``held_by``) travel the
same way. :data:`ERROR_SCHEMA` documents it in the OpenAPI document (core/schema.py).

Django's model ValidationError becomes a 400 naming the field, ProtectedError and
RestrictedError a 409 naming what holds the object, an integer the database cannot hold a 400,
a URL under ``/api/`` that matches nothing a JSON 404 (:func:`api_not_found`), and an unhandled
exception a JSON 500 (core.middleware.ApiErrorMiddleware), never Django's HTML pages.
"""

from typing import Any

from django.core.exceptions import SuspiciousOperation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Model, ProtectedError, RestrictedError
from django.http import HttpRequest, JsonResponse
from django.urls import Resolver404, resolve
from django.views.csrf import csrf_failure as django_csrf_failure
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

# The ``code`` of each status this API answers with.
ERROR_CODES = {
    400: "invalid",
    401: "not_authenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    415: "unsupported_media_type",
    429: "throttled",
    500: "server_error",
}

# The OpenAPI schema of every error body (referenced as components/schemas/Error).
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": (
        "Every error. A 400 also names each bad field (a list of messages, or a nested object "
        "for nested fields); the number import, assign and release list bad rows under "
        "`rows`; a 409 lists what holds the object under `held_by`."
    ),
    "properties": {
        "detail": {"type": "string", "description": "What went wrong, for people."},
        "code": {"type": "string", "enum": sorted(set(ERROR_CODES.values()))},
        "held_by": {
            "type": "array",
            "items": {"type": "string"},
            "description": "409 only: what still refers to the object.",
        },
        "rows": {
            "description": "Number import, assign and release: each bad row or entry.",
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "index": {"type": "integer"},
                    "field": {"type": "string", "nullable": True},
                    "message": {"type": "string"},
                },
                "required": ["index", "field", "message"],
            },
        },
    },
    "required": ["detail", "code"],
    "additionalProperties": True,
}


class InUse(Exception):
    """A service refuses to delete an object that something still needs (answered as 409)."""

    def __init__(self, detail: str, held_by: list[str]) -> None:
        super().__init__(detail)
        self.detail = detail
        self.held_by = held_by


def error_body(code: int, detail: str, **extra: Any) -> dict[str, Any]:
    return {"detail": detail, "code": ERROR_CODES.get(code, "error"), **extra}


def conflict_response(detail: str, held_by: list[str]) -> Response:
    return Response(error_body(409, detail, held_by=held_by), status=status.HTTP_409_CONFLICT)


def describe_holders(objects: Any) -> list[str]:
    """``["1 trunk", "2 phone numbers"]`` for a collection of model instances."""
    counts: dict[type[Model], int] = {}
    for obj in objects:
        counts[type(obj)] = counts.get(type(obj), 0) + 1
    return sorted(
        f"{n} {model._meta.verbose_name if n == 1 else model._meta.verbose_name_plural}"
        for model, n in counts.items()
    )


def _reshape(data: Any, code: int) -> dict[str, Any]:
    if code == 400:
        fields = data if isinstance(data, dict) else {"non_field_errors": data}
        if set(fields) == {"detail"}:  # a ParseError or a plain ValidationError("...")
            return error_body(400, str(fields["detail"]))
        return {**error_body(400, "Invalid input."), **fields}
    if isinstance(data, dict) and "detail" in data:
        return {**error_body(code, str(data["detail"])), **data, "code": ERROR_CODES.get(code)}
    return error_body(code, str(data))


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DjangoValidationError):
        detail = (
            exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        )
        exc = exceptions.ValidationError(detail)
    elif isinstance(exc, InUse):
        return conflict_response(exc.detail, exc.held_by)
    elif isinstance(exc, ProtectedError | RestrictedError):
        held_by = describe_holders(exc.args[1])
        detail = f"Cannot delete: still referenced by {', '.join(held_by)}."
        return conflict_response(detail, held_by)
    elif isinstance(exc, SuspiciousOperation):  # too many fields, a body too big, ...
        return Response(error_body(400, str(exc) or "Bad request."), status=400)
    elif isinstance(exc, OverflowError):  # SQLite: an integer wider than 64 bits
        return Response(
            error_body(400, "A number in the request is out of range."),
            status=status.HTTP_400_BAD_REQUEST,
        )
    response = exception_handler(exc, context)
    if response is not None:
        response.data = _reshape(response.data, response.status_code)
    return response


@csrf_exempt  # a POST to a wrong URL is a 404, not a CSRF failure
def api_not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
    """Any URL under /api/ that matches no endpoint: a JSON 404 (never the HTML page), which
    points at the same URL with a trailing slash when that one exists."""
    detail = "Not found."
    if not request.path.endswith("/"):
        try:
            match = resolve(request.path + "/")
        except Resolver404:
            match = None
        if match is not None and match.func is not api_not_found:
            detail = f"Not found. Did you mean {request.path}/ (with the trailing slash)?"
    return JsonResponse(error_body(404, detail), status=404)


def csrf_failure(request: HttpRequest, reason: str = "") -> Any:
    """CSRF_FAILURE_VIEW: under /api/ a JSON 403 in the one error shape; elsewhere Django's."""
    if request.path.startswith("/api/"):
        return JsonResponse(error_body(403, f"CSRF check failed: {reason}"), status=403)
    return django_csrf_failure(request, reason)
