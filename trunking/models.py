"""Provisioning: trunks and how they authenticate, numbers, carriers, and the edge nodes."""

from decimal import Decimal

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from accounts.models import Customer
from edge.config import media_error

from . import validators
from .choices import (
    DEFAULT_FAILOVER_STOP_CODES,
    CallerIdPolicy,
    EdgeHealth,
    MediaMode,
    NumberStatus,
    SrtpMode,
    Transport,
    TrunkStatus,
)

PRIORITY_VALIDATORS = [MinValueValidator(0), MaxValueValidator(65535)]
WEIGHT_VALIDATORS = [MinValueValidator(1), MaxValueValidator(65535)]


def default_stop_codes() -> list[int]:
    return list(DEFAULT_FAILOVER_STOP_CODES)


class Trunk(models.Model):
    """A customer's SIP trunk and the policy the edge enforces on its calls."""

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="trunks")
    name = models.CharField(max_length=100)
    status = models.CharField(
        max_length=16, choices=TrunkStatus.choices, default=TrunkStatus.ACTIVE
    )
    max_channels = models.PositiveIntegerField(
        default=10, validators=[MinValueValidator(1)], help_text="Concurrent calls, all edges."
    )
    max_cps = models.PositiveIntegerField(
        default=5, validators=[MinValueValidator(1)], help_text="New calls per second."
    )
    allowed_destinations = models.JSONField(
        default=list,
        blank=True,
        validators=[validators.validate_destination_list],
        help_text="E.164 prefixes (+44) or ISO country codes (GB); empty allows every destination.",
    )
    blocked_prefixes = models.JSONField(
        default=list,
        blank=True,
        validators=[validators.validate_prefix_list],
        help_text="E.164 prefixes always refused (premium, high-risk), even if allowed above.",
    )
    caller_id_policy = models.CharField(
        max_length=32, choices=CallerIdPolicy.choices, default=CallerIdPolicy.CUSTOMER_NUMBERS
    )
    failover_stop_codes = models.JSONField(
        default=default_stop_codes,
        blank=True,
        validators=[validators.validate_sip_code_list],
        help_text="SIP codes after which no further route is tried.",
    )
    registration_allowed = models.BooleanField(default=False)
    default_country = models.CharField(
        max_length=2,
        default="US",
        validators=[validators.validate_region],
        help_text="Country for dialled numbers not in international format.",
    )
    max_call_duration = models.PositiveIntegerField(
        default=14400, validators=[MinValueValidator(1)], help_text="Seconds; both legs end then."
    )
    media_mode = models.CharField(
        max_length=16,
        choices=MediaMode.choices,
        default=MediaMode.AUTO,
        help_text="Media through rtpengine (fixes NAT, hides addresses) or SDP untouched.",
    )
    srtp = models.CharField(
        max_length=16,
        choices=SrtpMode.choices,
        default=SrtpMode.OFF,
        help_text="SRTP (SDES) on the customer's side; needs media anchoring.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    tenant_lookup = "customer"

    class Meta:
        # By customer id, not name: a customer's own list needs no join.
        ordering = ["customer_id", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "name"], name="trunk_unique_name_per_customer"
            ),
            models.CheckConstraint(
                condition=models.Q(max_channels__gte=1), name="trunk_max_channels_positive"
            ),
            models.CheckConstraint(
                condition=models.Q(max_cps__gte=1), name="trunk_max_cps_positive"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.customer} / {self.name}"

    def clean(self) -> None:
        super().clean()
        problem = media_error(self.media_mode, self.srtp)
        if problem is not None:
            raise ValidationError({"srtp": problem})


class IpAclEntry(models.Model):
    """A source network from which the trunk's calls are accepted without digest auth."""

    trunk = models.ForeignKey(Trunk, on_delete=models.CASCADE, related_name="acl_entries")
    cidr = models.CharField(max_length=43, validators=[validators.validate_cidr])
    description = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    tenant_lookup = "trunk__customer"

    class Meta:
        ordering = ["trunk", "cidr"]
        verbose_name = "IP ACL entry"
        verbose_name_plural = "IP ACL entries"
        constraints = [
            models.UniqueConstraint(fields=["trunk", "cidr"], name="acl_unique_cidr_per_trunk"),
        ]

    def __str__(self) -> str:
        return self.cidr

    def clean(self) -> None:
        if self.cidr:
            self.cidr = validators.normalize_cidr(self.cidr)


class SipCredential(models.Model):
    """Digest credentials of a trunk. Only HA1 values are stored, never the password."""

    trunk = models.ForeignKey(Trunk, on_delete=models.CASCADE, related_name="credentials")
    username = models.CharField(max_length=64)
    realm = models.CharField(max_length=128)
    ha1_md5 = models.CharField(max_length=32, editable=False)
    ha1_sha256 = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    tenant_lookup = "trunk__customer"
    audit_exclude = frozenset({"ha1_md5", "ha1_sha256"})

    class Meta:
        ordering = ["realm", "username"]
        verbose_name = "SIP credential"
        constraints = [
            models.UniqueConstraint(
                fields=["realm", "username"], name="credential_unique_username_per_realm"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.username}@{self.realm}"


class OriginationUri(models.Model):
    """Where the edge sends a trunk's inbound calls: lowest priority first, weighted within."""

    trunk = models.ForeignKey(Trunk, on_delete=models.CASCADE, related_name="origination_uris")
    uri = models.CharField(max_length=255, validators=[validators.validate_origination_uri])
    priority = models.PositiveIntegerField(default=10, validators=PRIORITY_VALIDATORS)
    weight = models.PositiveIntegerField(default=100, validators=WEIGHT_VALIDATORS)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    tenant_lookup = "trunk__customer"

    class Meta:
        ordering = ["trunk", "priority", "-weight", "id"]
        verbose_name = "origination URI"
        constraints = [
            models.UniqueConstraint(
                fields=["trunk", "uri"], name="origination_unique_uri_per_trunk"
            ),
            models.CheckConstraint(
                condition=models.Q(priority__lte=65535), name="origination_priority_range"
            ),
            models.CheckConstraint(
                condition=models.Q(weight__gte=1, weight__lte=65535),
                name="origination_weight_range",
            ),
        ]

    def __str__(self) -> str:
        return self.uri


class PhoneNumber(models.Model):
    """A DID in E.164, owned by a customer and routed to one of its trunks (or none yet)."""

    number = models.CharField(max_length=16, unique=True)
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="numbers")
    trunk = models.ForeignKey(
        Trunk, on_delete=models.SET_NULL, null=True, blank=True, related_name="numbers"
    )
    status = models.CharField(
        max_length=16, choices=NumberStatus.choices, default=NumberStatus.ACTIVE
    )
    monthly_price = models.DecimalField(
        max_digits=10,
        decimal_places=4,
        default=Decimal("0"),
        validators=[MinValueValidator(Decimal("0"))],
    )
    description = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    tenant_lookup = "customer"

    class Meta:
        ordering = ["number"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(number__startswith="+"), name="number_is_e164"
            ),
            models.CheckConstraint(
                condition=models.Q(monthly_price__gte=0), name="number_price_non_negative"
            ),
        ]

    def __str__(self) -> str:
        return self.number


class Carrier(models.Model):
    """An upstream provider the edge sends outbound calls to."""

    name = models.CharField(max_length=100, unique=True)
    enabled = models.BooleanField(default=True)
    description = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class CarrierGateway(models.Model):
    """One signalling address of a carrier, with the destinations it takes."""

    carrier = models.ForeignKey(Carrier, on_delete=models.CASCADE, related_name="gateways")
    host = models.CharField(
        max_length=255,
        validators=[validators.validate_gateway_host],
        help_text="An IP address or a hostname; the port is given separately.",
    )
    port = models.PositiveIntegerField(
        default=5060, validators=[MinValueValidator(1), MaxValueValidator(65535)]
    )
    transport = models.CharField(max_length=3, choices=Transport.choices, default=Transport.UDP)
    priority = models.PositiveIntegerField(default=10, validators=PRIORITY_VALIDATORS)
    weight = models.PositiveIntegerField(default=100, validators=WEIGHT_VALIDATORS)
    enabled = models.BooleanField(default=True)
    prefixes = models.JSONField(
        default=list,
        blank=True,
        validators=[validators.validate_prefix_list],
        help_text="E.164 prefixes this gateway takes; empty takes every destination.",
    )
    tech_prefix = models.CharField(
        max_length=16,
        blank=True,
        validators=[validators.validate_tech_prefix],
        help_text="Digits the carrier wants before the number.",
    )
    strip_plus = models.BooleanField(
        default=False, help_text="Send 4415... instead of +4415... in the Request-URI."
    )
    srtp = models.BooleanField(
        default=False,
        help_text="Offer SRTP (SDES) to this gateway on calls whose media is anchored; "
        "carriers get plain RTP otherwise.",
    )

    class Meta:
        ordering = ["carrier", "priority", "-weight", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["carrier", "host", "port", "transport"], name="gateway_unique_address"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.carrier}: {self.transport}:{self.host}:{self.port}"


class EdgeNode(models.Model):
    """A running SIP edge. Its control token is derived from SECRET_KEY, never stored."""

    name = models.CharField(max_length=100, unique=True)
    sip_addresses = models.JSONField(default=list, blank=True, help_text='["203.0.113.10:5060"]')
    control_url = models.CharField(
        max_length=200,
        validators=[validators.validate_control_url],
        help_text="Base URL of the edge's control API, e.g. http://edge-1:8081.",
    )
    # Where customers' PBXs send calls (shown on every trunk) and where carriers see calls
    # come from (customers and carriers put these in their firewalls).
    public_host = models.CharField(
        max_length=255,
        blank=True,
        help_text="Public SIP address or name for PBXs; empty: the host of the first SIP address.",
    )
    udp_port = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(65535)],
        help_text="Empty: the port of the first SIP address.",
    )
    tcp_port = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(65535)],
        help_text="Empty: the port of the first SIP address.",
    )
    tls_port = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(65535)],
        help_text="Empty: no TLS offered.",
    )
    carrier_source_ips = models.JSONField(
        default=list,
        blank=True,
        help_text='Where calls to carriers come from, ["203.0.113.10"]; empty: the public host.',
    )
    enabled = models.BooleanField(default=True)
    token_generation = models.PositiveIntegerField(default=1, editable=False)
    applied_version = models.BigIntegerField(
        null=True, blank=True, editable=False, help_text="Config version the edge reported."
    )
    health = models.CharField(
        max_length=16, choices=EdgeHealth.choices, default=EdgeHealth.UNKNOWN, editable=False
    )
    last_seen = models.DateTimeField(null=True, blank=True, editable=False)
    last_push_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_push_error = models.TextField(blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    # Runtime state the control plane records; changing it is no configuration change.
    audit_exclude = frozenset(
        {"applied_version", "health", "last_seen", "last_push_at", "last_push_error"}
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ConfigRevision(models.Model):
    """One published version of the edge configuration snapshot.

    The id is the version: monotonic, never reused. A rebuild whose content hash equals the
    latest revision's reuses that version, so changes that do not alter what edges need (and
    several changes pushed together) do not create new versions.
    """

    content_hash = models.CharField(max_length=64)
    # What the edges' compiler leaves out of this version, and why (edge.config.Refusal
    # dicts, the first REFUSALS_KEPT of them): rows stored before a rule existed, or behind
    # the API's back. refusal_count is None until the version has been checked.
    refusals = models.JSONField(default=list, blank=True, editable=False)
    refusal_count = models.PositiveIntegerField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    REFUSALS_KEPT = 200

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"v{self.pk} ({self.content_hash[:12]})"
