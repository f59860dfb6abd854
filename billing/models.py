"""Billing's records. For now the call detail records the edges journal; rate decks, balances
and invoices come with the billing issue."""

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


class Cdr(models.Model):
    """One call attempt as an edge recorded it (`edge.cdr.CallDetailRecord`), admitted or not.

    Rows are written only by `services.cdrs_ingest` and never change. ``(edge, call_id)`` is
    unique, so loading a journal twice, or retrying a batch after a crash, inserts nothing new.
    ``customer`` and ``trunk`` are kept by id without a database constraint, as in
    `accounts.AuditEntry`: call history outlives the objects it describes, and a record naming
    an object deleted since must still load. A value the record does not have (no B leg, a number
    that is not E.164, no answer) is stored as "".

    Partitioning by month (DESIGN, Scale-out) comes with the billing issue. PostgreSQL requires
    the partition key in every unique constraint of a partitioned table, so the idempotency key
    will then be (edge, call_id, setup_at) — equally unique, since a record's setup time never
    changes.
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
    media = models.JSONField(
        null=True,
        blank=True,
        help_text="Anchored media as rtpengine counted it: packets, bytes, loss, jitter, MOS.",
    )
    config_version = models.PositiveBigIntegerField(help_text="Edge config the call ran under.")
    ingested_at = models.DateTimeField(db_default=Now(), editable=False)

    tenant_lookup = "customer"

    class Meta:
        verbose_name = "CDR"
        ordering = ["-setup_at"]
        constraints = [
            models.UniqueConstraint(fields=["edge", "call_id"], name="cdr_unique_call_per_edge"),
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
