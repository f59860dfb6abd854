"""OpenAPI pieces shared by every app's views (drf-spectacular): the one error shape, the
``force`` parameter of deletes, and the hook that documents every error response.

Every operation documents the error statuses it can answer, all with the ``Error`` body of
core.exceptions: 400, 401, 403, 404, 405, 406, 415, 429 and 500, and 409 on deletes. The
document must tell the truth (schemathesis checks it: core/tests/test_openapi_conformance.py).
"""

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework import serializers

from .exceptions import ERROR_CODES, ERROR_SCHEMA

FORCE_PARAMETER = OpenApiParameter(
    "force",
    OpenApiTypes.BOOL,
    OpenApiParameter.QUERY,
    required=False,
    description="Staff only: delete what still refers to the object too (each audited).",
)


class ErrorSerializer(serializers.Serializer):
    """Documentation only: the body of every error (completed by :func:`document_errors`)."""

    detail = serializers.CharField()
    code = serializers.CharField()

    class Meta:
        ref_name = "Error"


ERROR = ErrorSerializer
ERROR_REF = {"$ref": "#/components/schemas/Error"}
_EVERYWHERE = sorted(set(ERROR_CODES) - {409})


def document_errors(result: dict[str, Any], generator: Any, **kwargs: Any) -> dict[str, Any]:
    """Postprocessing hook: the Error component, and every error response on every operation."""
    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for path in result.get("paths", {}).values():
        for method, operation in path.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            codes = [*_EVERYWHERE, *([409] if method == "delete" else [])]
            for code in codes:
                response = operation["responses"].setdefault(
                    str(code), {"description": ERROR_CODES[code].replace("_", " ").capitalize()}
                )
                response["content"] = {"application/json": {"schema": ERROR_REF}}
    return result
