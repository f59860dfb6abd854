"""Billing's records: the call detail records the edges journal (rated on ingest), the lines
that could not be stored as one, each edge's ingest progress, export jobs, rate decks and their
assignments, the balance ledger, invoices."""

from decimal import Decimal

from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.db.models.functions import Now

from accounts.models import Customer, currency_validator
from edge.cdr import (
    CALL_ID_MAX,
    E164_MAX,
    EDGE_MAX,
    HANGUP_SIDES,
    NUMBER_RAW_MAX,
    REASON_MAX,
    SIP_CALL_ID_MAX,
    TARGET_MAX,
)
from trunking.models import Trunk

from .choices import DIRECTION_CHOICES, ExportFormat, ExportStatus, QuarantineReason


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
    direction = models.CharField(max_length=8, choices=DIRECTION_CHOICES)
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
    # Rating, done as the record is ingested (billing.rating): the rate row used, the seconds
    # it charged and the cost in the deck's currency. An unanswered attempt costs 0 and needs
    # no rate; an answered call without one keeps cost NULL and says why in `unrated_reason`.
    rate = models.ForeignKey(
        "billing.Rate",
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        db_index=False,  # nothing looks CDRs up by rate; an index would only slow ingest
        null=True,
        blank=True,
        related_name="+",
    )
    billed_seconds = models.PositiveIntegerField(default=0, help_text="After increments.")
    cost = models.DecimalField(max_digits=16, decimal_places=4, null=True, blank=True)
    currency = models.CharField(max_length=3, blank=True)
    unrated_reason = models.CharField(max_length=32, blank=True)
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


class ExportJob(models.Model):
    """A CDR export too large to stream in one request, written to a file by a Celery task.

    ``filters`` are the query parameters of `filtersets.CdrFilterSet` as the caller gave them;
    the task applies them again, within ``customer`` (the caller's tenant; None for staff, who
    may name a customer among the filters). The file lives in ``settings.CDR_EXPORT_DIR`` until
    ``expires_at``, when the periodic `tasks.expire_cdr_exports` deletes it.
    """

    customer = models.ForeignKey(
        Customer, on_delete=models.CASCADE, null=True, blank=True, related_name="+"
    )
    created_by = models.ForeignKey(
        "accounts.User", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    api_key = models.ForeignKey(
        "accounts.ApiKey", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    format = models.CharField(max_length=8, choices=ExportFormat.choices)
    columns = models.JSONField(help_text="Column names, in order.")
    filters = models.JSONField(default=dict, blank=True, help_text="CdrFilterSet parameters.")
    status = models.CharField(
        max_length=16, choices=ExportStatus.choices, default=ExportStatus.QUEUED
    )
    rows_total = models.PositiveBigIntegerField(
        default=0, help_text="Rows that matched when the job was created."
    )
    rows_written = models.PositiveBigIntegerField(default=0)
    file_name = models.CharField(max_length=200, blank=True, editable=False)
    size_bytes = models.PositiveBigIntegerField(default=0)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    tenant_lookup = "customer"

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "CDR export"
        indexes = [models.Index(fields=["status", "expires_at"], name="exportjob_expiry_idx")]

    def __str__(self) -> str:
        return f"CDR export #{self.pk} ({self.get_format_display()}, {self.status})"

    @property
    def progress(self) -> float:
        """Share of the rows written, 0.0 to 1.0 (1.0 once done, even if rows came or went)."""
        if self.status == ExportStatus.DONE:
            return 1.0
        if not self.rows_total:
            return 0.0
        return min(1.0, self.rows_written / self.rows_total)


# --- Rating and balances (the billing issue) ---------------------------------------------------

digits_validator = RegexValidator(r"^[0-9]{1,15}$", "A prefix is 1 to 15 digits, without '+'.")


class RateDeck(models.Model):
    """A price list: rows of prefix and price, in one currency. Decks are the operator's; a deck
    prices a customer's calls through `RateAssignment`."""

    name = models.CharField(max_length=200, unique=True)
    currency = models.CharField(max_length=3, validators=[currency_validator])
    description = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Bumped by every change of its rows (import, edit): the rating cache keys on it.
    updated_at = models.DateTimeField(auto_now=True)

    # A customer reads the decks assigned to it (through more than one assignment, maybe:
    # querysets scoped by it need distinct()).
    tenant_lookup = "assignments__customer"

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.currency})"


class Rate(models.Model):
    """One row of a deck. Rows of one prefix never overlap in time (checked on import)."""

    deck = models.ForeignKey(RateDeck, on_delete=models.CASCADE, related_name="rates")
    prefix = models.CharField(max_length=15, validators=[digits_validator])
    destination = models.CharField(max_length=100, blank=True)
    rate_per_minute = models.DecimalField(
        max_digits=12, decimal_places=6, validators=[MinValueValidator(Decimal("0"))]
    )
    connect_fee = models.DecimalField(
        max_digits=12,
        decimal_places=6,
        default=Decimal("0"),
        validators=[MinValueValidator(Decimal("0"))],
    )
    first_block = models.PositiveIntegerField(
        default=60, validators=[MinValueValidator(1)], help_text="Seconds."
    )
    increment = models.PositiveIntegerField(
        default=60, validators=[MinValueValidator(1)], help_text="Seconds."
    )
    effective_from = models.DateTimeField()
    effective_to = models.DateTimeField(null=True, blank=True, help_text="Exclusive; empty: open.")

    tenant_lookup = "deck__assignments__customer"

    class Meta:
        ordering = ["deck", "prefix", "effective_from"]
        indexes = [models.Index(fields=["deck", "prefix"], name="rate_deck_prefix_idx")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(rate_per_minute__gte=0) & models.Q(connect_fee__gte=0),
                name="rate_non_negative",
            ),
            models.CheckConstraint(
                condition=models.Q(first_block__gte=1) & models.Q(increment__gte=1),
                name="rate_blocks_positive",
            ),
            models.CheckConstraint(
                condition=models.Q(effective_to__isnull=True)
                | models.Q(effective_to__gt=models.F("effective_from")),
                name="rate_period_ordered",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.prefix} {self.destination} {self.rate_per_minute}/min"


class RateAssignment(models.Model):
    """From `valid_from` on, `deck` prices the customer's calls of `direction` (on `trunk` only,
    when set: a trunk's assignment wins over the customer's). Inbound decks price minutes per
    DID (the called number)."""

    customer = models.ForeignKey(
        Customer, on_delete=models.CASCADE, related_name="rate_assignments"
    )
    trunk = models.ForeignKey(
        Trunk, on_delete=models.CASCADE, null=True, blank=True, related_name="rate_assignments"
    )
    deck = models.ForeignKey(RateDeck, on_delete=models.PROTECT, related_name="assignments")
    direction = models.CharField(max_length=8, choices=DIRECTION_CHOICES, default="outbound")
    valid_from = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    tenant_lookup = "customer"

    class Meta:
        ordering = ["customer", "direction", "-valid_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "trunk", "direction", "valid_from"],
                name="rate_assignment_unique_start",
            ),
        ]

    def __str__(self) -> str:
        scope = f"trunk {self.trunk_id}" if self.trunk_id else "all trunks"
        return f"{self.customer} {self.direction} ({scope}): {self.deck} from {self.valid_from}"


class LedgerEntry(models.Model):
    """One change of a customer's balance. The balance is the sum of the entries; entries are
    never edited or deleted (a mistake is corrected by another entry)."""

    class Kind(models.TextChoices):
        TOPUP = "topup", "Top-up"
        USAGE = "usage", "Usage"
        RECURRING = "recurring", "Recurring charge"
        REFUND = "refund", "Refund"
        ADJUSTMENT = "adjustment", "Adjustment"

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="ledger")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    # Credit positive (top-up, refund), debit negative (usage, recurring charges).
    amount = models.DecimalField(max_digits=16, decimal_places=4)
    currency = models.CharField(max_length=3, validators=[currency_validator])
    created_at = models.DateTimeField(auto_now_add=True)
    actor = models.CharField(
        max_length=200, help_text="Who: a user, an API key, or the system job that posted it."
    )
    note = models.CharField(max_length=500, blank=True, help_text="Why.")
    # The month (its first day) the entry belongs to on invoices: a call's answer month for
    # usage, the charged month for a recurring charge, the posting month otherwise.
    period = models.DateField()
    # What it is for, unique per customer and kind when set: an ingest batch, a number and
    # month for a recurring charge. Posting the same reference twice adds nothing.
    reference = models.CharField(max_length=200, blank=True)

    tenant_lookup = "customer"

    class Meta:
        verbose_name_plural = "ledger entries"
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["customer", "created_at"], name="ledger_customer_idx")]
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "kind", "reference"],
                condition=~models.Q(reference=""),
                name="ledger_unique_reference",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.customer} {self.kind} {self.amount} {self.currency}"


class Balance(models.Model):
    """A customer's running balance: the sum of its ledger entries, kept up to date in the same
    transaction as each entry (so the snapshot and the API read one row, not the whole ledger).
    Never edited directly; `billing.services.ledger_post` is its only writer and
    `ledger_verify` recomputes it from the ledger."""

    customer = models.OneToOneField(Customer, on_delete=models.CASCADE, related_name="balance")
    amount = models.DecimalField(max_digits=16, decimal_places=4, default=Decimal("0"))
    low_balance_threshold = models.DecimalField(
        max_digits=16,
        decimal_places=4,
        null=True,
        blank=True,
        help_text="An event is raised (audit row, live board) when the balance falls below it.",
    )
    below_threshold = models.BooleanField(default=False, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    tenant_lookup = "customer"

    def __str__(self) -> str:
        return f"{self.customer}: {self.amount}"


class Invoice(models.Model):
    """A customer's bill for one month, or a credit note correcting an issued one.

    Drafts are rebuilt freely; issuing gives the next number of the gapless sequence and
    freezes the invoice and its lines (`services.invoice_issue`). A correction of an issued
    invoice is a credit note (`kind=credit_note`, `corrects` the original), never an edit."""

    class Kind(models.TextChoices):
        INVOICE = "invoice", "Invoice"
        CREDIT_NOTE = "credit_note", "Credit note"

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        ISSUED = "issued", "Issued"

    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="invoices")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.INVOICE)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.DRAFT)
    number = models.PositiveIntegerField(null=True, blank=True, unique=True, editable=False)
    period = models.DateField(help_text="The first day of the month billed.")
    currency = models.CharField(max_length=3, validators=[currency_validator])
    # The sum of the lines, to 1/10,000 like the ledger; documents show the amount due rounded
    # to the currency's minor unit beside it.
    total = models.DecimalField(max_digits=16, decimal_places=4, default=Decimal("0"))
    corrects = models.ForeignKey(
        "self", on_delete=models.PROTECT, null=True, blank=True, related_name="credit_notes"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    issued_at = models.DateTimeField(null=True, blank=True, editable=False)

    tenant_lookup = "customer"

    class Meta:
        ordering = ["-period", "-id"]
        constraints = [
            # One draft or issued invoice per customer and month (credit notes aside).
            models.UniqueConstraint(
                fields=["customer", "period"],
                condition=models.Q(kind="invoice"),
                name="invoice_one_per_month",
            ),
        ]

    def __str__(self) -> str:
        label = f"#{self.number}" if self.number else "draft"
        return f"{self.get_kind_display()} {label} {self.customer} {self.period:%Y-%m}"


class InvoiceLine(models.Model):
    class Kind(models.TextChoices):
        USAGE = "usage", "Usage"
        NUMBERS = "numbers", "Number charges"
        ADJUSTMENT = "adjustment", "Adjustments and refunds"

    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    description = models.CharField(max_length=200)
    quantity = models.DecimalField(
        max_digits=16, decimal_places=2, default=Decimal("0"), help_text="Calls, minutes, items."
    )
    minutes = models.DecimalField(max_digits=16, decimal_places=2, default=Decimal("0"))
    amount = models.DecimalField(max_digits=16, decimal_places=4)

    class Meta:
        ordering = ["invoice", "kind", "description"]

    def __str__(self) -> str:
        return f"{self.description}: {self.amount}"


class InvoiceSequence(models.Model):
    """The last number issued: a single row, locked while an invoice is issued, so numbers
    have no gaps even with concurrent issuing."""

    last = models.PositiveIntegerField(default=0)

    def __str__(self) -> str:
        return f"last invoice number {self.last}"


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
