"""Billing's records. For now the call detail records the edges journal, the lines that could
not be stored as one, and each edge's ingest progress; rate decks, balances and invoices come
with the billing issue."""

from django.db import models
from django.db.models.functions import Now

from accounts.models import Customer
from edge.cdr import (
    CALL_ID_MAX,
    DIRECTIONS,
    E164_MAX,
    EDGE_MAX,
    HANGUP_SIDES,
    NUMBER_RAW_MAX,
    REASON_MAX,
    SIP_CALL_ID_MAX,
    TARGET_MAX,
)
from trunking.models import Trunk

from .choices import QuarantineReason


class Cdr(models.Model):
    """One call attempt as an edge recorded it (`edge.cdr.CallDetailRecord`), admitted or not.

    Rows are written only by `services.cdrs_ingest` and never change. ``(edge, call_id)`` is
    unique, so loading a journal twice, or retrying a batch after a crash, inserts nothing new.
    ``customer`` and ``trunk`` are kept by id without a database constraint, as in
    `accounts.AuditEntry`: call history outlives the objects it describes, and a record naming
    an object deleted since must still load. A value the record does not have (no B leg, a number
    that is not E.164, no answer) is stored as "".

    On PostgreSQL the table is partitioned by month of ``setup_at`` (migration 0002, partitions
    made ahead by `tasks.cdr_partitions_ensure`, a default partition for anything else; see
    docs/cdr-pipeline.md). PostgreSQL requires the partition key in every unique constraint of
    a partitioned table, so the idempotency key is (edge, call_id, setup_at): as unique as
    (edge, call_id), since a record's setup time is written once, in its journal line, and a
    re-sent line carries the same one. The primary key there is (id, setup_at); ``id`` alone
    still comes from one sequence, so it stays unique.
    """

    edge = models.CharField(max_length=EDGE_MAX, help_text="The edge node that handled the call.")
    call_id = models.CharField(max_length=CALL_ID_MAX, help_text="The edge's id of this record.")
    a_call_id = models.CharField("caller leg Call-ID", max_length=SIP_CALL_ID_MAX)
    b_call_id = models.CharField("callee leg Call-ID", max_length=SIP_CALL_ID_MAX, blank=True)
    # The composite indexes below serve every lookup by customer or trunk; a separate index on
    # each would only slow down ingestion.
    customer = models.ForeignKey(
        Customer,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        null=True,
        blank=True,
        related_name="+",
    )
    trunk = models.ForeignKey(
        Trunk,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,
        null=True,
        blank=True,
        related_name="+",
    )
    direction = models.CharField(max_length=8, choices=[(d, d.capitalize()) for d in DIRECTIONS])
    caller_e164 = models.CharField("caller", max_length=E164_MAX, blank=True)
    callee_e164 = models.CharField("callee", max_length=E164_MAX, blank=True)
    caller_raw = models.CharField("caller as received", max_length=NUMBER_RAW_MAX, blank=True)
    callee_raw = models.CharField("callee as received", max_length=NUMBER_RAW_MAX, blank=True)
    source_ip = models.GenericIPAddressField("source IP")
    source_port = models.PositiveIntegerField()
    routes = models.JSONField(
        default=list, blank=True, help_text="Every route tried: [{target, kind, status, reason}]."
    )
    answered_by = models.CharField(max_length=TARGET_MAX, blank=True)
    setup_at = models.DateTimeField()
    ringing_at = models.DateTimeField(null=True, blank=True)
    answer_at = models.DateTimeField(null=True, blank=True)
    end_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField(default=0, help_text="Answer to end.")
    billable_seconds = models.PositiveIntegerField(default=0)
    final_code = models.PositiveSmallIntegerField(help_text="SIP status the caller was given.")
    reason = models.CharField(max_length=REASON_MAX, help_text="Why the call ended, as a code.")
    hangup_side = models.CharField(
        max_length=8, choices=[(s, s.capitalize()) for s in HANGUP_SIDES], blank=True
    )
    codecs = models.JSONField(default=list, blank=True)
    config_version = models.PositiveBigIntegerField(help_text="Edge config the call ran under.")
    ingested_at = models.DateTimeField(db_default=Now(), editable=False)

    tenant_lookup = "customer"

    class Meta:
        verbose_name = "CDR"
        ordering = ["-setup_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["edge", "call_id", "setup_at"], name="cdr_unique_call_per_edge"
            ),
        ]
        indexes = [
            models.Index(fields=["customer", "setup_at"], name="cdr_customer_setup_idx"),
            models.Index(fields=["trunk", "setup_at"], name="cdr_trunk_setup_idx"),
            # The admin's newest-first list and its date drill-down.
            models.Index(fields=["setup_at"], name="cdr_setup_idx"),
        ]

    def __str__(self) -> str:
        caller = self.caller_e164 or self.caller_raw or "?"
        callee = self.callee_e164 or self.callee_raw or "?"
        return f"{caller} → {callee} at {self.setup_at:%Y-%m-%d %H:%M:%S} ({self.final_code})"


class CdrQuarantine(models.Model):
    """A journal line or record the pipeline could not store as a plain CDR, and why.

    Nothing shipped is dropped: a line that does not decode, a torn last line, or a record from
    an edge that is not registered is held here (``stored`` false) with its text, so an
    operator can read it and, once the cause is fixed, retry it (admin action). A record whose
    customer or trunk has been deleted since is stored in `Cdr` all the same (call history
    outlives what it names) and noted here (``stored`` true) for the operator to see. Either
    way the records shipped behind it go on. ``key`` makes a redelivered batch note nothing
    twice: the line's place in its journal (edge, file, byte offset), or the record's id.
    """

    key = models.CharField(max_length=255, unique=True, editable=False)
    edge = models.CharField(max_length=EDGE_MAX, help_text="The edge that shipped it.")
    source = models.CharField(
        max_length=255, blank=True, help_text="Journal file sequence and byte offset of the line."
    )
    reason = models.CharField(max_length=32, choices=QuarantineReason.choices)
    detail = models.TextField(help_text="What is wrong, in words.")
    call_id = models.CharField(max_length=CALL_ID_MAX, blank=True)
    line = models.TextField(
        blank=True, help_text="The journal line as shipped (bytes that are not UTF-8 escaped)."
    )
    stored = models.BooleanField(default=False, help_text="The record is also in the CDR table.")
    received_at = models.DateTimeField(db_default=Now(), editable=False)
    resolved_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name = "CDR quarantine entry"
        verbose_name_plural = "CDR quarantine"
        ordering = ["-received_at", "-id"]
        indexes = [models.Index(fields=["edge", "received_at"], name="cdrq_edge_received_idx")]

    def __str__(self) -> str:
        return f"{self.edge} {self.source or self.call_id}: {self.reason}"


class CdrIngestProgress(models.Model):
    """How far each edge's CDRs have got into the database, updated in the ingest transaction."""

    edge = models.CharField(max_length=EDGE_MAX, unique=True)
    committed = models.PositiveBigIntegerField(default=0, help_text="Records newly stored.")
    duplicates = models.PositiveBigIntegerField(
        default=0, help_text="Records shipped again that were already stored (re-sends)."
    )
    quarantined = models.PositiveBigIntegerField(default=0)
    last_committed_at = models.DateTimeField(null=True, blank=True)
    last_call_end_at = models.DateTimeField(
        null=True, blank=True, help_text="End of the newest call committed."
    )
    last_lag_seconds = models.FloatField(
        null=True, blank=True, help_text="Commit time minus call end, worst of the last batch."
    )

    class Meta:
        verbose_name_plural = "CDR ingest progress"
        ordering = ["edge"]

    def __str__(self) -> str:
        return f"{self.edge}: {self.committed} committed"
