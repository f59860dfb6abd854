"""API views of the accounts app: each a few lines on the tenant-scoped base."""

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response

from core.schema import FORCE_PARAMETER
from core.viewsets import TenantScopedReadOnlyViewSet, TenantScopedViewSet

from .. import services
from ..filtersets import ApiKeyFilterSet, AuditEntryFilterSet, CustomerFilterSet, UserFilterSet
from ..models import ApiKey, AuditEntry, Customer, User
from .serializers import (
    ApiKeySerializer,
    AuditEntrySerializer,
    CustomerSerializer,
    IssuedApiKeySerializer,
    ReasonSerializer,
    UserSerializer,
)


class CustomerViewSet(TenantScopedViewSet):
    """Customers (tenants). Members read their own; only staff create, change or suspend."""

    queryset = Customer.objects.all()
    serializer_class = CustomerSerializer
    filterset_class = CustomerFilterSet
    search_fields = ["name"]
    ordering_fields = ["name", "created_at"]

    def check_permissions(self, request: Request) -> None:
        super().check_permissions(request)
        if request.method not in ("GET", "HEAD", "OPTIONS") and not self.caller.is_staff:
            raise PermissionDenied("Only operators change customers.")

    @extend_schema(parameters=[FORCE_PARAMETER])
    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Delete the customer. One with numbers, trunks or members answers 409 naming them
        unless ``?force=true``, which deletes those first (each audited)."""
        return super().destroy(request, *args, **kwargs)

    def perform_destroy(self, instance: Customer) -> None:
        services.customer_delete(actor=self.caller, customer=instance, force=self.force_requested())

    def _set_status(self, request: Request, service: Any) -> Response:
        reason = ReasonSerializer(data=request.data)
        reason.is_valid(raise_exception=True)
        customer = service(actor=self.caller, customer=self.get_object(), **reason.validated_data)
        return Response(CustomerSerializer(customer).data)

    @extend_schema(request=ReasonSerializer, responses=CustomerSerializer)
    @action(detail=True, methods=["post"])
    def suspend(self, request: Request, pk: str | None = None) -> Response:
        """Suspend the customer: the edge refuses all of its calls."""
        return self._set_status(request, services.customer_suspend)

    @extend_schema(request=ReasonSerializer, responses=CustomerSerializer)
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str | None = None) -> Response:
        return self._set_status(request, services.customer_resume)


class UserViewSet(TenantScopedViewSet):
    """People: staff see everyone; a customer's owners and admins manage its members."""

    queryset = User.objects.select_related("membership__customer").order_by("username")
    serializer_class = UserSerializer
    filterset_class = UserFilterSet
    search_fields = ["username", "email", "first_name", "last_name"]
    ordering_fields = ["username", "date_joined"]

    def perform_create(self, serializer: UserSerializer) -> None:
        data = dict(serializer.validated_data)
        membership = data.pop("membership")
        customer = self.caller.customer or membership["customer"]
        serializer.instance = services.member_create(
            actor=self.caller,
            customer=customer,
            username=data["username"],
            email=data.get("email", ""),
            role=membership["role"],
            password=data.get("password"),
        )

    def perform_update(self, serializer: UserSerializer) -> None:
        data = dict(serializer.validated_data)
        role = data.pop("membership", {}).get("role")
        if serializer.instance.is_staff:
            raise PermissionDenied("Operators are managed in the admin.")
        serializer.instance = services.member_update(
            actor=self.caller, user=serializer.instance, role=role, **data
        )

    def perform_destroy(self, instance: User) -> None:
        if instance.is_staff:
            raise PermissionDenied("Operators are managed in the admin.")
        super().perform_destroy(instance)


class ApiKeyViewSet(TenantScopedViewSet):
    """API keys: the secret is returned once, on creation. DELETE revokes (the row stays)."""

    queryset = ApiKey.objects.select_related("customer")
    serializer_class = ApiKeySerializer
    filterset_class = ApiKeyFilterSet
    search_fields = ["name", "prefix"]
    ordering_fields = ["created_at", "last_used_at", "name"]
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    @extend_schema(responses={201: IssuedApiKeySerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        customer = self.caller.customer if not self.caller.is_staff else data.get("customer")
        issued = services.api_key_create(
            actor=self.caller, customer=customer, name=data["name"], role=data.get("role", "admin")
        )
        body = IssuedApiKeySerializer(issued.api_key, context=self.get_serializer_context()).data
        body["key"] = issued.secret
        return Response(body, status=status.HTTP_201_CREATED)

    def perform_update(self, serializer: ApiKeySerializer) -> None:
        # Only the name may change; role and customer are fixed at issue.
        serializer.validated_data.pop("role", None)
        serializer.validated_data.pop("customer", None)
        super().perform_update(serializer)

    def perform_destroy(self, instance: ApiKey) -> None:
        services.api_key_revoke(actor=self.caller, api_key=instance)


class AuditEntryViewSet(TenantScopedReadOnlyViewSet):
    """The audit log, newest first; read-only."""

    queryset = AuditEntry.objects.select_related("actor", "api_key", "content_type")
    serializer_class = AuditEntrySerializer
    filterset_class = AuditEntryFilterSet
    ordering_fields = ["time"]
