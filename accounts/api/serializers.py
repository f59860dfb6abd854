"""API representations of customers, members, API keys and audit entries."""

from typing import Any

from rest_framework import serializers

from core.serializers import StrictModelSerializer, StrictSerializer, TenantOwnedSerializer
from core.tenancy import get_caller

from ..choices import Role
from ..models import ApiKey, AuditEntry, Customer, User

ROLE_RANK = {Role.READ_ONLY: 0, Role.BILLING: 1, Role.ADMIN: 2, Role.OWNER: 3}


def validate_grantable_role(serializer: serializers.Serializer, role: str) -> str:
    """A customer caller may grant at most its own role; staff may grant any."""
    caller = get_caller(serializer.context["request"])
    if caller is not None and not caller.is_staff and ROLE_RANK[role] > ROLE_RANK[caller.role]:
        raise serializers.ValidationError("You cannot grant a role above your own.")
    return role


class CustomerSerializer(StrictModelSerializer):
    class Meta:
        model = Customer
        fields = [
            "id",
            "name",
            "status",
            "billing_mode",
            "credit_limit",
            "currency",
            "default_country",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["status", "created_at", "updated_at"]


class ReasonSerializer(StrictSerializer):
    reason = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


class UserSerializer(StrictModelSerializer):
    customer = serializers.PrimaryKeyRelatedField(
        source="membership.customer", queryset=Customer.objects.all(), required=False
    )
    role = serializers.ChoiceField(source="membership.role", choices=Role.choices)
    password = serializers.CharField(
        write_only=True, required=False, style={"input_type": "password"}, min_length=10
    )

    class Meta:
        model = User
        fields = [
            "id",
            "username",
            "email",
            "first_name",
            "last_name",
            "is_active",
            "is_staff",
            "customer",
            "role",
            "password",
            "date_joined",
            "last_login",
        ]
        read_only_fields = ["is_staff", "date_joined", "last_login"]

    def get_fields(self) -> dict[str, Any]:
        fields = super().get_fields()
        caller = get_caller(self.context["request"]) if "request" in self.context else None
        if (caller is not None and not caller.is_staff) or self.instance is not None:
            fields["customer"].read_only = True
        return fields

    def validate_role(self, role: str) -> str:
        return validate_grantable_role(self, role)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        caller = get_caller(self.context["request"])
        membership = attrs.get("membership", {})
        if (
            self.instance is None
            and caller is not None
            and caller.is_staff
            and "customer" not in membership
        ):
            raise serializers.ValidationError({"customer": "This field is required."})
        return attrs


class ApiKeySerializer(TenantOwnedSerializer):
    customer = serializers.PrimaryKeyRelatedField(
        queryset=Customer.objects.all(),
        allow_null=True,
        required=False,
        help_text="Staff only; null issues an operator key with staff rights.",
    )

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "customer",
            "name",
            "role",
            "prefix",
            "created_at",
            "last_used_at",
            "revoked_at",
        ]
        read_only_fields = ["prefix", "created_at", "last_used_at", "revoked_at"]

    def validate_role(self, role: str) -> str:
        return validate_grantable_role(self, role)


class IssuedApiKeySerializer(ApiKeySerializer):
    key = serializers.CharField(
        read_only=True, help_text="The whole key. Shown once, in this response only."
    )

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "key"]


class AuditEntrySerializer(StrictModelSerializer):
    object_type = serializers.CharField(source="content_type.model", read_only=True)
    actor = serializers.SlugRelatedField(slug_field="username", read_only=True, allow_null=True)
    api_key = serializers.SlugRelatedField(slug_field="prefix", read_only=True, allow_null=True)

    class Meta:
        model = AuditEntry
        fields = [
            "id",
            "time",
            "actor",
            "api_key",
            "customer",
            "object_type",
            "object_id",
            "object_repr",
            "action",
            "changes",
            "request_id",
            "note",
        ]
