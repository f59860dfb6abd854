"""Routes of the accounts API."""

from rest_framework.routers import BaseRouter

from . import views


def register(router: BaseRouter) -> None:
    router.register("customers", views.CustomerViewSet)
    router.register("users", views.UserViewSet)
    router.register("api-keys", views.ApiKeyViewSet)
    router.register("audit-log", views.AuditEntryViewSet)
