"""API representations of the trunking objects."""

from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.serializers import TenantOwnedSerializer, TenantScopedRelatedField
from core.tenancy import get_caller
from edge.config import media_error

from .. import validators
from ..choices import MediaMode, SrtpMode
from ..models import (
    Carrier,
    CarrierGateway,
    EdgeNode,
    IpAclEntry,
    OriginationUri,
    PhoneNumber,
    SipCredential,
    Trunk,
)


def _django_to_drf(func: Any, value: Any) -> Any:
    try:
        return func(value)
    except DjangoValidationError as exc:
        raise serializers.ValidationError(exc.messages) from exc


class TrunkSerializer(TenantOwnedSerializer):
    class Meta:
        model = Trunk
        fields = [
            "id",
            "customer",
            "name",
            "status",
            "max_channels",
            "max_cps",
            "allowed_destinations",
            "blocked_prefixes",
            "caller_id_policy",
            "failover_stop_codes",
            "registration_allowed",
            "default_country",
            "max_call_duration",
            "media_mode",
            "srtp",
            "created_at",
            "updated_at",
        ]
        # Status changes go through the suspend/resume actions, which audit a reason.
        read_only_fields = ["status", "created_at", "updated_at"]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        current = self.instance
        media_mode = attrs.get("media_mode", getattr(current, "media_mode", MediaMode.AUTO))
        srtp = attrs.get("srtp", getattr(current, "srtp", SrtpMode.OFF))
        problem = media_error(media_mode, srtp)
        if problem is not None:
            raise serializers.ValidationError({"srtp": problem})
        return attrs


class TrunkChildSerializer(serializers.ModelSerializer):
    """Objects that hang under a trunk: the trunk must be one of the caller's."""

    trunk = TenantScopedRelatedField(queryset=Trunk.objects.all())

    def validate_trunk(self, trunk: Trunk) -> Trunk:
        if self.instance is not None and trunk.pk != self.instance.trunk_id:
            raise serializers.ValidationError("An object cannot move to another trunk.")
        return trunk


class IpAclEntrySerializer(TrunkChildSerializer):
    class Meta:
        model = IpAclEntry
        fields = ["id", "trunk", "cidr", "description", "created_at"]

    def validate_cidr(self, value: str) -> str:
        return _django_to_drf(validators.normalize_cidr, value)


class SipCredentialSerializer(TrunkChildSerializer):
    password = serializers.CharField(
        write_only=True,
        required=False,
        min_length=12,
        style={"input_type": "password"},
        help_text="Leave out to have one generated. Returned once, in the creation response.",
    )

    class Meta:
        model = SipCredential
        fields = ["id", "trunk", "username", "realm", "password", "created_at"]
        read_only_fields = ["realm", "created_at"]

    def validate_username(self, value: str) -> str:
        taken = SipCredential.objects.filter(realm=settings.SIP_REALM, username=value)
        if self.instance is not None:
            taken = taken.exclude(pk=self.instance.pk)
        if taken.exists():
            raise serializers.ValidationError("This username is taken in this realm.")
        return value


class IssuedCredentialSerializer(SipCredentialSerializer):
    password = serializers.CharField(read_only=True, help_text="Shown once.")


class PasswordSerializer(serializers.Serializer):
    password = serializers.CharField(required=False, min_length=12, write_only=True)


class OriginationUriSerializer(TrunkChildSerializer):
    class Meta:
        model = OriginationUri
        fields = ["id", "trunk", "uri", "priority", "weight", "enabled", "created_at"]


class PhoneNumberSerializer(TenantOwnedSerializer):
    number = serializers.CharField(max_length=40, help_text="Any spelling; stored as E.164.")
    trunk = TenantScopedRelatedField(queryset=Trunk.objects.all(), allow_null=True, required=False)

    class Meta:
        model = PhoneNumber
        fields = [
            "id",
            "number",
            "customer",
            "trunk",
            "status",
            "monthly_price",
            "description",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["created_at", "updated_at"]

    def validate_number(self, value: str) -> str:
        number = _django_to_drf(validators.normalize_e164, value)
        taken = PhoneNumber.objects.filter(number=number)
        if self.instance is not None:
            taken = taken.exclude(pk=self.instance.pk)
        if taken.exists():
            raise serializers.ValidationError(f"{number} already exists.")
        return number

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        trunk = attrs.get("trunk", getattr(self.instance, "trunk", None))
        caller = get_caller(self.context["request"])
        customer = (
            attrs.get("customer", getattr(self.instance, "customer", None))
            if caller is None or caller.is_staff
            else caller.customer
        )
        if trunk is not None and customer is not None and trunk.customer_id != customer.pk:
            raise serializers.ValidationError({"trunk": "The trunk belongs to another customer."})
        return attrs


class NumberImportRowSerializer(serializers.Serializer):
    """One row of a bulk import (documentation only; rows are checked by the service)."""

    number = serializers.CharField()
    trunk = serializers.IntegerField(required=False, allow_null=True)
    monthly_price = serializers.DecimalField(max_digits=10, decimal_places=4, required=False)
    status = serializers.CharField(required=False)
    description = serializers.CharField(required=False)


@extend_schema_field(NumberImportRowSerializer(many=True))
class NumberImportRowsField(serializers.ListField):
    """Rows are checked by the import service, which reports every bad row by index and field."""

    child = serializers.JSONField()


class NumberImportSerializer(serializers.Serializer):
    customer = serializers.IntegerField(required=False, help_text="Staff only: whose numbers.")
    numbers = NumberImportRowsField(allow_empty=False, max_length=100_000)


class NumberImportErrorSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    field = serializers.CharField(allow_null=True)
    message = serializers.CharField()


class NumberImportErrorsSerializer(serializers.Serializer):
    numbers = NumberImportErrorSerializer(many=True)


class NumberImportResultSerializer(serializers.Serializer):
    created = serializers.IntegerField()


class CarrierGatewaySerializer(serializers.ModelSerializer):
    class Meta:
        model = CarrierGateway
        fields = [
            "id",
            "carrier",
            "host",
            "port",
            "transport",
            "priority",
            "weight",
            "enabled",
            "prefixes",
            "tech_prefix",
            "strip_plus",
            "srtp",
        ]


class CarrierSerializer(serializers.ModelSerializer):
    gateways = CarrierGatewaySerializer(many=True, read_only=True)

    class Meta:
        model = Carrier
        fields = ["id", "name", "enabled", "description", "gateways", "created_at", "updated_at"]
        read_only_fields = ["created_at", "updated_at"]


class EdgeNodeSerializer(serializers.ModelSerializer):
    lag = serializers.SerializerMethodField(
        help_text="Config versions behind the current one (null: never applied)."
    )

    class Meta:
        model = EdgeNode
        fields = [
            "id", "name", "sip_addresses", "control_url", "enabled", "applied_version", "lag",
            "health", "last_seen", "last_push_at", "last_push_error", "created_at", "updated_at",
        ]  # fmt: skip
        read_only_fields = [
            "applied_version", "health", "last_seen", "last_push_at", "last_push_error",
            "created_at", "updated_at",
        ]  # fmt: skip

    def get_lag(self, node: EdgeNode) -> int | None:
        current = self.context.get("config_version")
        if current is None or node.applied_version is None:
            return None
        return max(current - node.applied_version, 0)


class ConfigVersionSerializer(serializers.Serializer):
    version = serializers.IntegerField(allow_null=True)
    content_hash = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField(allow_null=True)


class IssuedEdgeNodeSerializer(EdgeNodeSerializer):
    token = serializers.CharField(read_only=True, help_text="Control-API token; shown once.")

    class Meta(EdgeNodeSerializer.Meta):
        fields = [*EdgeNodeSerializer.Meta.fields, "token"]
