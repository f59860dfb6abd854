"""Enumerations of the billing app."""

from django.db import models


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
