"""Serializer pieces shared by every app: tenant-scoped relations and the customer field."""

from typing import Any

from rest_framework import serializers

from .tenancy import get_caller


class TenantScopedRelatedField(serializers.PrimaryKeyRelatedField):
    """A foreign key the caller may only point at its own tenant's objects.

    Another tenant's id is reported exactly like an id that does not exist.
    """

    def get_queryset(self) -> Any:
        queryset = super().get_queryset()
        request = self.context.get("request")
        caller = get_caller(request) if request is not None else None
        return caller.scope(queryset) if caller is not None else queryset.none()


class CallerCustomerDefault:
    """The calling customer, so that uniqueness validators see it before the row is saved."""

    requires_context = True

    def __call__(self, serializer_field: serializers.Field) -> Any:
        caller = get_caller(serializer_field.context["request"])
        return caller.customer if caller is not None else None


class TenantOwnedSerializer(serializers.ModelSerializer):
    """For models with a ``customer`` field: staff choose it, customers get their own."""

    def get_fields(self) -> dict[str, Any]:
        fields = super().get_fields()
        if "customer" in fields:
            request = self.context.get("request")
            caller = get_caller(request) if request is not None else None
            if caller is not None and not caller.is_staff:
                fields["customer"] = serializers.PrimaryKeyRelatedField(
                    read_only=True, default=CallerCustomerDefault()
                )
        return fields

    def create(self, validated_data: dict[str, Any]) -> Any:
        caller = get_caller(self.context["request"])
        if caller is not None and not caller.is_staff:
            validated_data["customer"] = caller.customer
        return super().create(validated_data)
