"""URL map: admin, REST API v1, OpenAPI schema and docs, internal endpoints."""

from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from core.exceptions import api_not_found
from trunking.internal import edge_snapshot

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("config.api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="api-redoc"),
    re_path(r"^api/", api_not_found),  # JSON 404, never the HTML page
    path("internal/edge/snapshot", edge_snapshot, name="edge-snapshot"),
    path("", include("core.urls")),
]
