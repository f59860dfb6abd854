"""API representations of the trunking objects."""

import ipaddress
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from billing.choices import DIRECTION_CHOICES
from core.serializers import (
    StrictModelSerializer,
    StrictSerializer,
    TenantOwnedSerializer,
    TenantScopedRelatedField,
)
from core.tenancy import get_caller
from edge.config import media_error

from .. import selectors, services, validators
from ..choices import MediaMode, SrtpMode
from ..models import (
    Carrier,
    CarrierGateway,
    ConfigRevision,
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


def _check(func: Any, **kwargs: Any) -> Any:
    """A selector's check, its field errors ({field: messages}) as DRF's."""
    try:
        return func(**kwargs)
    except DjangoValidationError as exc:
        raise serializers.ValidationError(exc.message_dict) from exc


def _is_staff(serializer: serializers.Serializer) -> bool:
    request = serializer.context.get("request")
    caller = get_caller(request) if request is not None else None
    return caller is not None and caller.is_staff


class SipEndpointSerializer(serializers.Serializer):
    edge = serializers.CharField()
    transport = serializers.ChoiceField(choices=["udp", "tcp", "tls"])
    host = serializers.CharField()
    port = serializers.IntegerField(min_value=1, max_value=65535)
    uri = serializers.CharField(help_text="The same as a SIP URI, for a PBX's trunk settings.")


class TrunkSerializer(TenantOwnedSerializer):
    sip_endpoints = serializers.SerializerMethodField(
        help_text="Where this trunk's PBX sends calls: every enabled edge, per transport."
    )
    carrier_source_addresses = serializers.SerializerMethodField(
        help_text="Addresses the edges' calls come from (for firewalls)."
    )

    @extend_schema_field(SipEndpointSerializer(many=True))
    def get_sip_endpoints(self, trunk: Trunk) -> list[dict[str, Any]]:
        if "sip_endpoints" not in self.context:  # once per request, not per trunk
            self.context["sip_endpoints"] = [e.as_dict() for e in selectors.edge_sip_endpoints()]
        return list(self.context["sip_endpoints"])

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_carrier_source_addresses(self, trunk: Trunk) -> list[str]:
        if "carrier_source_addresses" not in self.context:
            self.context["carrier_source_addresses"] = selectors.carrier_source_addresses()
        return list(self.context["carrier_source_addresses"])

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
            "sip_endpoints",
            "carrier_source_addresses",
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


class TrunkChildSerializer(StrictModelSerializer):
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

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # Across rows: no other trunk's network, no carrier's address, not too broad.
        if "cidr" in attrs:
            trunk = attrs.get("trunk", getattr(self.instance, "trunk", None))
            attrs["cidr"] = _check(
                selectors.acl_source_check,
                cidr=attrs["cidr"],
                trunk_id=trunk.pk if trunk is not None else None,
                staff=_is_staff(self),
            )
        return attrs


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


class PasswordSerializer(StrictSerializer):
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

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        trunk = attrs.get("trunk", getattr(self.instance, "trunk", None))
        caller = get_caller(self.context["request"])
        if self.instance is None and attrs.get("customer") is None and trunk is not None:
            attrs["customer"] = trunk.customer  # staff naming only a trunk: its customer's
        attrs = super().validate(attrs)
        customer = (
            attrs.get("customer", getattr(self.instance, "customer", None))
            if caller is None or caller.is_staff
            else caller.customer
        )
        if trunk is not None and customer is not None and trunk.customer_id != customer.pk:
            raise serializers.ValidationError({"trunk": "The trunk belongs to another customer."})
        if "number" in attrs:
            # A national number is read in the trunk's (or the customer's) default country.
            try:
                number = services.normalize_number(attrs["number"], trunk=trunk, customer=customer)
            except DjangoValidationError as exc:
                raise serializers.ValidationError({"number": exc.messages}) from exc
            taken = PhoneNumber.objects.filter(number=number)
            if self.instance is not None:
                taken = taken.exclude(pk=self.instance.pk)
            if taken.exists():
                raise serializers.ValidationError({"number": [f"{number} already exists."]})
            attrs["number"] = number
        return attrs


class NumberImportRowSerializer(StrictSerializer):
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


class NumberImportSerializer(StrictSerializer):
    customer = serializers.IntegerField(required=False, help_text="Staff only: whose numbers.")
    numbers = NumberImportRowsField(allow_empty=False, max_length=100_000)


class NumberImportResultSerializer(serializers.Serializer):
    created = serializers.IntegerField()
    numbers = PhoneNumberSerializer(many=True, help_text="The numbers created, with their ids.")


class NumberListField(serializers.ListField):
    child = serializers.CharField(max_length=40)

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault(
            "help_text",
            "Numbers in any spelling (national ones in the trunk's "
            "or the customer's default country).",
        )
        super().__init__(allow_empty=False, max_length=10_000, **kwargs)


class NumberAssignSerializer(StrictSerializer):
    trunk = TenantScopedRelatedField(queryset=Trunk.objects.all())
    numbers = NumberListField()


class NumberReleaseSerializer(StrictSerializer):
    numbers = NumberListField()


class NumbersSerializer(serializers.Serializer):
    numbers = PhoneNumberSerializer(many=True)


class CarrierGatewaySerializer(StrictModelSerializer):
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

    def validate_host(self, value: str) -> str:
        # Not inside any trunk's source network (the field's own rule ran first).
        _django_to_drf(lambda host: selectors.gateway_source_check(host=host), value)
        return value


class CarrierSerializer(StrictModelSerializer):
    gateways = CarrierGatewaySerializer(many=True, read_only=True)

    class Meta:
        model = Carrier
        fields = ["id", "name", "enabled", "description", "gateways", "created_at", "updated_at"]
        read_only_fields = ["created_at", "updated_at"]


class ConfigRefusalSerializer(serializers.Serializer):
    kind = serializers.CharField(help_text="trunk, acl, origination_uri, credential, number…")
    id = serializers.JSONField(help_text="The trunk's or gateway's id, or the number.")
    field = serializers.CharField()
    reason = serializers.CharField()


class EdgeNodeSerializer(StrictModelSerializer):
    lag = serializers.SerializerMethodField(
        help_text="Config versions behind the current one (null: never applied)."
    )
    config_refusals = serializers.SerializerMethodField(
        help_text="What the edge left out of the version it runs (rows it refuses), the first "
        f"{ConfigRevision.REFUSALS_KEPT}; null until that version has been checked."
    )
    config_refusal_count = serializers.SerializerMethodField()

    class Meta:
        model = EdgeNode
        fields = [
            "id", "name", "sip_addresses", "public_host", "udp_port", "tcp_port", "tls_port",
            "carrier_source_ips", "control_url", "enabled", "applied_version", "lag",
            "health", "last_seen", "last_push_at", "last_push_error", "config_refusals",
            "config_refusal_count", "created_at", "updated_at",
        ]  # fmt: skip
        read_only_fields = [
            "applied_version", "health", "last_seen", "last_push_at", "last_push_error",
            "created_at", "updated_at",
        ]  # fmt: skip

    def _revision(self, node: EdgeNode) -> tuple[list[Any], int] | None:
        return self.context.get("config_refusals", {}).get(node.applied_version)

    @extend_schema_field(ConfigRefusalSerializer(many=True, allow_null=True))
    def get_config_refusals(self, node: EdgeNode) -> list[Any] | None:
        checked = self._revision(node)
        return checked[0] if checked is not None else None

    def get_config_refusal_count(self, node: EdgeNode) -> int | None:
        checked = self._revision(node)
        return checked[1] if checked is not None else None

    def validate_carrier_source_ips(self, value: Any) -> list[str]:
        if not isinstance(value, list):
            raise serializers.ValidationError("Give a list of IP addresses.")
        try:
            return [str(ipaddress.ip_address(str(a).strip())) for a in value]
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from exc

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


class ActiveCallSerializer(serializers.Serializer):
    """A call in progress on an edge, as the edge lists it (GET /calls), with names."""

    call_id = serializers.CharField(help_text="The edge's id of the call (its CDR's call_id).")
    edge = serializers.CharField(help_text="Name of the edge node carrying the call.")
    trunk_id = serializers.IntegerField(allow_null=True)
    trunk = serializers.CharField(allow_null=True)
    customer_id = serializers.IntegerField(allow_null=True)
    customer = serializers.CharField(allow_null=True)
    direction = serializers.ChoiceField(choices=DIRECTION_CHOICES)
    caller = serializers.CharField(allow_null=True, help_text="E.164")
    callee = serializers.CharField(allow_null=True, help_text="E.164")
    state = serializers.ChoiceField(choices=["setup", "ringing", "answered"])
    setup_at = serializers.DateTimeField(allow_null=True)
    answer_at = serializers.DateTimeField(allow_null=True)


class UnreachableEdgeSerializer(serializers.Serializer):
    edge = serializers.CharField()
    error = serializers.CharField()


class ActiveCallListSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    results = ActiveCallSerializer(many=True)
    unreachable_edges = UnreachableEdgeSerializer(
        many=True, help_text="Edges that did not answer: their calls are missing from results."
    )


class ActiveCallFilterSerializer(serializers.Serializer):
    """Query parameters of GET /api/v1/calls/active/."""

    customer = serializers.IntegerField(required=False, help_text="Customer id (staff).")
    trunk = serializers.IntegerField(required=False, help_text="Trunk id.")
    edge = serializers.CharField(required=False, help_text="Edge node name.")
    search = serializers.CharField(
        required=False, help_text="Part of the caller, callee, trunk, customer or call id."
    )
