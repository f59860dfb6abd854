"""API error handling: Django's model ValidationError and ProtectedError become 400/409 with
field names, like DRF's own validation errors, instead of 500s."""

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import ProtectedError, RestrictedError
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DjangoValidationError):
        detail = (
            exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        )
        exc = exceptions.ValidationError(detail)
    elif isinstance(exc, ProtectedError | RestrictedError):
        names = sorted({type(o)._meta.verbose_name_plural for o in exc.args[1]})
        return Response(
            {"detail": f"Cannot delete: still referenced by {', '.join(names)}."},
            status=status.HTTP_409_CONFLICT,
        )
    return exception_handler(exc, context)
