"""Enumerations of the billing app."""

from django.db import models

from edge.cdr import DIRECTIONS

# A call's direction, as every model, filter and serializer offers it (one enum in the API).
DIRECTION_CHOICES = [(d, d.capitalize()) for d in DIRECTIONS]


class ExportFormat(models.TextChoices):
    CSV = "csv", "CSV"
    JSONL = "jsonl", "JSON Lines"


class ExportStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"
    EXPIRED = "expired", "Expired"


class QuarantineReason(models.TextChoices):
    """Why a shipped CDR line is in `CdrQuarantine`."""

    UNDECODABLE = "undecodable", "line does not decode"
    TORN_LINE = "torn_line", "torn last line (crash mid-write)"
    UNKNOWN_EDGE = "unknown_edge", "edge not registered"
    EDGE_MISMATCH = "edge_mismatch", "record names another edge than the one that shipped it"
    CUSTOMER_DELETED = "customer_deleted", "customer no longer exists"
    TRUNK_DELETED = "trunk_deleted", "trunk no longer exists"
    INGEST_FAILED = "ingest_failed", "the batch could not be stored"
