"""Routes of the billing API."""

from rest_framework.routers import BaseRouter

from . import views


def register(router: BaseRouter) -> None:
    router.register("cdrs", views.CdrViewSet)
    router.register("cdr-exports", views.ExportJobViewSet, basename="cdrexport")
