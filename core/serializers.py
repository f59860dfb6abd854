"""Serializer pieces shared by every app: the strict bases, tenant-scoped relations and the
customer field.

Every API serializer derives from :class:`StrictSerializer` or :class:`StrictModelSerializer`,
the one place where a write is checked for what it must not silently drop:

- a field the endpoint does not have (``channel_limit`` for ``max_channels``) is a 400 naming it;
- a read-only field sent with a value other than the object's own is a 400 naming it (sending
  back what a GET returned is fine);
- text fields refuse control characters (names, descriptions, usernames, hosts);
- integer fields carry the bounds of their column on every database (and in the OpenAPI
  document), so an out-of-range value is a 400, never a database error.
"""

from typing import Any

from django.db import models
from rest_framework import serializers

from .filters import integer_range
from .tenancy import get_caller
from .validators import validate_no_control_characters


class StrictSerializerMixin:
    """Refuses unknown and read-only fields in writes (see the module docstring)."""

    def to_internal_value(self, data: Any) -> Any:
        errors: dict[str, list[str]] = {}
        if isinstance(data, dict) or hasattr(data, "keys"):
            fields = self.fields  # type: ignore[attr-defined]
            for name in data:
                field = fields.get(name)
                if field is None:
                    errors[name] = ["Unknown field."]
                elif field.read_only and not self._echoes_current(name, field, data[name]):
                    errors[name] = ["This field is read-only."]
        try:
            value = super().to_internal_value(data)  # type: ignore[misc]
        except serializers.ValidationError as exc:
            if isinstance(exc.detail, dict):
                errors = {**exc.detail, **errors}
            else:
                raise
        if errors:
            raise serializers.ValidationError(errors)
        return value

    def _echoes_current(self, name: str, field: serializers.Field, value: Any) -> bool:
        """Whether ``value`` is what the client would have read for this read-only field."""
        instance = getattr(self, "instance", None)
        if instance is None or isinstance(instance, list | models.QuerySet):
            return value is None  # a new object has no id, status or times of its own yet
        try:
            current = field.to_representation(field.get_attribute(instance))
        except Exception:  # a field that cannot be read back: not an echo
            return False
        return current == value or str(current) == str(value)


class StrictSerializer(StrictSerializerMixin, serializers.Serializer):
    pass


class StrictModelSerializer(StrictSerializerMixin, serializers.ModelSerializer):
    def build_standard_field(self, field_name: str, model_field: Any) -> Any:
        field_class, field_kwargs = super().build_standard_field(field_name, model_field)
        bounds = integer_range(model_field)
        if bounds is not None and issubclass(field_class, serializers.IntegerField):
            low, high = bounds
            field_kwargs["min_value"] = max(field_kwargs.get("min_value", low), low)
            field_kwargs["max_value"] = min(field_kwargs.get("max_value", high), high)
        if issubclass(field_class, serializers.CharField) and not isinstance(
            model_field, models.TextField
        ):
            validators = list(field_kwargs.get("validators", []))
            field_kwargs["validators"] = [*validators, validate_no_control_characters]
        return field_class, field_kwargs


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


class TenantOwnedSerializer(StrictModelSerializer):
    """For models with a ``customer`` field: staff choose it, customers get their own.

    ``customer`` is therefore never required in the schema; staff creating an object are told
    when they leave it out.
    """

    def get_fields(self) -> dict[str, Any]:
        fields = super().get_fields()
        if "customer" in fields and not fields["customer"].read_only:
            fields["customer"].required = False
            request = self.context.get("request")
            caller = get_caller(request) if request is not None else None
            if caller is not None and not caller.is_staff:
                fields["customer"] = serializers.PrimaryKeyRelatedField(
                    read_only=True, default=CallerCustomerDefault()
                )
        return fields

    def _echoes_current(self, name: str, field: serializers.Field, value: Any) -> bool:
        if name == "customer" and self.instance is None:
            caller = get_caller(self.context["request"])
            own = caller.customer.pk if caller is not None and caller.customer else None
            return value is None or value == own
        return super()._echoes_current(name, field, value)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        caller = get_caller(self.context["request"])
        customer_field = self.fields.get("customer")
        if (
            self.instance is None
            and caller is not None
            and caller.is_staff
            and customer_field is not None
            and not customer_field.read_only
            and attrs.get("customer") is None
            and not customer_field.allow_null
        ):
            raise serializers.ValidationError({"customer": ["This field is required."]})
        return attrs

    def create(self, validated_data: dict[str, Any]) -> Any:
        caller = get_caller(self.context["request"])
        if caller is not None and not caller.is_staff:
            validated_data["customer"] = caller.customer
        return super().create(validated_data)
