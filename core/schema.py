"""OpenAPI pieces shared by every app's views (drf-spectacular)."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter

FORCE_PARAMETER = OpenApiParameter(
    "force",
    OpenApiTypes.BOOL,
    OpenApiParameter.QUERY,
    required=False,
    description="Staff only: delete what still refers to the object too (each audited).",
)
