"""Enumerations of the trunking app."""

from django.db import models


class TrunkStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    SUSPENDED = "suspended", "Suspended"


class CallerIdPolicy(models.TextChoices):
    # The caller-ID of an outbound call must be one of the customer's own numbers.
    CUSTOMER_NUMBERS = "customer_numbers", "Customer's own numbers only"
    PASS_THROUGH = "pass_through", "Pass through unchanged"


class MediaMode(models.TextChoices):
    # The values are edge.config.MEDIA_MODES (the edge's compiler is the rule's home).
    AUTO = "auto", "Anchor when the edge has rtpengine, else pass through"
    ANCHOR = "anchor", "Anchor in rtpengine (refuse calls when none is reachable)"
    PASSTHROUGH = "passthrough", "Pass SDP through untouched"


class SrtpMode(models.TextChoices):
    # The values are edge.config.SRTP_MODES: SDES (RTP/SAVP) on the customer's side.
    REQUIRED = "required", "Required"
    OFFERED = "offered", "Offered"
    OFF = "off", "Off"


class Transport(models.TextChoices):
    UDP = "udp", "UDP"
    TCP = "tcp", "TCP"
    TLS = "tls", "TLS"


class NumberStatus(models.TextChoices):
    ACTIVE = "active", "Active"
    RESERVED = "reserved", "Reserved"
    DISABLED = "disabled", "Disabled"


class EdgeHealth(models.TextChoices):
    UNKNOWN = "unknown", "Unknown"
    OK = "ok", "OK"
    DRAINING = "draining", "Draining"
    # It answers, but refused the last push: it runs an older version.
    FAILING = "failing", "Failing"
    UNREACHABLE = "unreachable", "Unreachable"


# SIP final responses after which we stop trying further routes (the callee answered "no").
DEFAULT_FAILOVER_STOP_CODES = [404, 486, 600, 603]
