"""Enumerations of the billing app, one home each."""

from django.db import models


class QuarantineReason(models.TextChoices):
    """Why a shipped CDR line is in `CdrQuarantine`."""

    UNDECODABLE = "undecodable", "line does not decode"
    TORN_LINE = "torn_line", "torn last line (crash mid-write)"
    UNKNOWN_EDGE = "unknown_edge", "edge not registered"
    EDGE_MISMATCH = "edge_mismatch", "record names another edge than the one that shipped it"
    CUSTOMER_DELETED = "customer_deleted", "customer no longer exists"
    TRUNK_DELETED = "trunk_deleted", "trunk no longer exists"
    INGEST_FAILED = "ingest_failed", "the batch could not be stored"
