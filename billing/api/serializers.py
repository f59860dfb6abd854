"""Serializers of the billing API: call history (read-only), its summary, export jobs."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.urls import reverse
from rest_framework import serializers

from accounts.models import Customer
from trunking.models import Trunk

from ..choices import ExportFormat
from ..exports import parse_columns
from ..models import (
    Cdr,
    ExportJob,
    Invoice,
    InvoiceLine,
    LedgerEntry,
    Rate,
    RateAssignment,
    RateDeck,
)
from ..selectors import out_of_credit

_LIST_FIELDS = [
    "id",
    "setup_at",
    "ringing_at",
    "answer_at",
    "end_at",
    "direction",
    "customer",
    "trunk",
    "trunk_name",
    "caller_e164",
    "callee_e164",
    "caller_raw",
    "callee_raw",
    "final_code",
    "reason",
    "answered",
    "duration_ms",
    "billable_seconds",
    "hangup_side",
    "edge",
    "call_id",
]


class CdrSerializer(serializers.ModelSerializer):
    trunk_name = serializers.CharField(source="trunk.name", default=None, read_only=True)
    answered = serializers.SerializerMethodField()

    class Meta:
        model = Cdr
        fields = _LIST_FIELDS
        read_only_fields = fields

    def get_answered(self, cdr: Cdr) -> bool:
        return cdr.answer_at is not None


class RouteAttemptSerializer(serializers.Serializer):
    target = serializers.CharField()
    kind = serializers.CharField()
    status = serializers.IntegerField(allow_null=True)
    reason = serializers.CharField()


class DecisionTraceSerializer(serializers.Serializer):
    """How the edge decided: every route tried in order, then the outcome."""

    routes = RouteAttemptSerializer(many=True)
    answered_by = serializers.CharField()
    final_code = serializers.IntegerField()
    reason = serializers.CharField()
    hangup_side = serializers.CharField()
    config_version = serializers.IntegerField()


class CdrDetailSerializer(CdrSerializer):
    decision_trace = serializers.SerializerMethodField()

    class Meta(CdrSerializer.Meta):
        fields = [
            *_LIST_FIELDS,
            "a_call_id",
            "b_call_id",
            "source_ip",
            "source_port",
            "codecs",
            "config_version",
            "ingested_at",
            "decision_trace",
        ]
        read_only_fields = fields

    def get_decision_trace(self, cdr: Cdr) -> dict[str, Any]:
        return DecisionTraceSerializer(
            {
                "routes": [
                    {
                        "target": r.get("target", ""),
                        "kind": r.get("kind", ""),
                        "status": r.get("status"),
                        "reason": r.get("reason", ""),
                    }
                    for r in cdr.routes or []
                ],
                "answered_by": cdr.answered_by,
                "final_code": cdr.final_code,
                "reason": cdr.reason,
                "hangup_side": cdr.hangup_side,
                "config_version": cdr.config_version,
            }
        ).data


class _Figures(serializers.Serializer):
    attempts = serializers.IntegerField()
    answered = serializers.IntegerField()
    asr = serializers.DecimalField(max_digits=5, decimal_places=4, allow_null=True)
    acd_seconds = serializers.DecimalField(max_digits=12, decimal_places=2, allow_null=True)
    minutes = serializers.DecimalField(max_digits=16, decimal_places=2)
    billable_minutes = serializers.DecimalField(max_digits=16, decimal_places=2)


class TrunkFiguresSerializer(_Figures):
    trunk = serializers.IntegerField(allow_null=True)
    trunk_name = serializers.CharField(allow_null=True)


class ReasonFiguresSerializer(serializers.Serializer):
    reason = serializers.CharField()
    attempts = serializers.IntegerField()
    answered = serializers.IntegerField()
    share = serializers.DecimalField(max_digits=5, decimal_places=4)


class CdrSummarySerializer(_Figures):
    since = serializers.DateTimeField()
    until = serializers.DateTimeField()
    by_trunk = TrunkFiguresSerializer(many=True)
    by_reason = ReasonFiguresSerializer(many=True)


class ExportParamsSerializer(serializers.Serializer):
    """``format`` and ``columns`` of an export (the filters are CdrFilterSet's)."""

    format = serializers.ChoiceField(choices=ExportFormat.choices, default=ExportFormat.CSV)
    columns = serializers.CharField(
        required=False,
        allow_blank=True,
        help_text="Comma-separated column names, in order; default: the usual ones.",
    )

    def validate_columns(self, value: str) -> list[str]:
        try:
            return parse_columns(value)
        except ValueError as exc:
            raise serializers.ValidationError(str(exc)) from exc

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs.setdefault("columns", parse_columns(None))
        return attrs


class ExportJobSerializer(serializers.ModelSerializer):
    progress = serializers.FloatField(read_only=True)
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = ExportJob
        fields = [
            "id",
            "status",
            "format",
            "columns",
            "filters",
            "rows_total",
            "rows_written",
            "progress",
            "size_bytes",
            "error",
            "created_at",
            "started_at",
            "finished_at",
            "expires_at",
            "download_url",
        ]
        read_only_fields = fields

    def get_download_url(self, job: ExportJob) -> str | None:
        if job.status != "done":
            return None
        path = reverse("cdrexport-download", args=[job.pk])
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request is not None else path


class ExportJobCreateSerializer(ExportParamsSerializer):
    """The body of ``POST /cdr-exports/``: format, columns and the CDR filters, flat, as the
    query string of ``GET /cdrs/export/``."""


class RateDeckSerializer(serializers.ModelSerializer):
    rates = serializers.IntegerField(source="rates.count", read_only=True)

    class Meta:
        model = RateDeck
        fields = ["id", "name", "currency", "description", "rates", "created_at", "updated_at"]
        read_only_fields = ["created_at", "updated_at"]


class RateSerializer(serializers.ModelSerializer):
    class Meta:
        model = Rate
        fields = [
            "id", "deck", "prefix", "destination", "rate_per_minute", "connect_fee",
            "first_block", "increment", "effective_from", "effective_to",
        ]  # fmt: skip
        read_only_fields = fields


class RateImportSerializer(serializers.Serializer):
    csv = serializers.CharField(
        trim_whitespace=False, help_text="The deck as CSV text, with a header line."
    )
    replace = serializers.BooleanField(
        default=False, help_text="Delete the deck's rows first (else rows are added)."
    )


class RateImportLineErrorSerializer(serializers.Serializer):
    line = serializers.IntegerField()
    column = serializers.CharField()
    message = serializers.CharField()


class RateImportErrorSerializer(serializers.Serializer):
    csv = RateImportLineErrorSerializer(many=True)


class RateImportResultSerializer(serializers.Serializer):
    imported = serializers.IntegerField()


class RateAssignmentSerializer(serializers.ModelSerializer):
    customer = serializers.PrimaryKeyRelatedField(queryset=Customer.objects.all())
    trunk = serializers.PrimaryKeyRelatedField(
        queryset=Trunk.objects.all(), required=False, allow_null=True
    )

    class Meta:
        model = RateAssignment
        fields = ["id", "customer", "trunk", "deck", "direction", "valid_from", "created_at"]
        read_only_fields = ["created_at"]
        # Uniqueness (and currency, ownership) is checked by the service, with the trunk
        # optional; DRF's generated validator would make the nullable trunk required.
        validators: list[Any] = []


class LedgerEntrySerializer(serializers.ModelSerializer):
    # Operators post money movements; usage and recurring charges are posted by the system.
    kind = serializers.ChoiceField(
        choices=[
            LedgerEntry.Kind.TOPUP,
            LedgerEntry.Kind.REFUND,
            LedgerEntry.Kind.ADJUSTMENT,
        ]
    )
    customer = serializers.PrimaryKeyRelatedField(queryset=Customer.objects.all())
    amount = serializers.DecimalField(
        max_digits=16,
        decimal_places=4,
        help_text="Credit positive, debit negative. Top-ups and refunds must be positive.",
    )
    note = serializers.CharField(max_length=500, help_text="Why: it is kept with the entry.")

    class Meta:
        model = LedgerEntry
        fields = [
            "id", "customer", "kind", "amount", "currency", "period", "note", "actor",
            "reference", "created_at",
        ]  # fmt: skip
        read_only_fields = ["currency", "period", "actor", "reference", "created_at"]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["kind"] in (LedgerEntry.Kind.TOPUP, LedgerEntry.Kind.REFUND) and attrs[
            "amount"
        ] <= Decimal("0"):
            raise serializers.ValidationError({"amount": "A top-up or refund is positive."})
        if attrs["amount"] == 0:
            raise serializers.ValidationError({"amount": "An entry moves the balance."})
        return attrs


class LedgerEntryReadSerializer(LedgerEntrySerializer):
    kind = serializers.ChoiceField(choices=LedgerEntry.Kind.choices, read_only=True)


class BalanceSerializer(serializers.ModelSerializer):
    customer = serializers.IntegerField(source="id", read_only=True)
    balance = serializers.DecimalField(
        source="balance_amount", max_digits=16, decimal_places=4, read_only=True
    )
    low_balance_threshold = serializers.DecimalField(
        source="balance_threshold",
        max_digits=16,
        decimal_places=4,
        allow_null=True,
        required=False,
        help_text="Below it an event is raised (staff set it).",
    )
    out_of_credit = serializers.SerializerMethodField()

    class Meta:
        model = Customer
        fields = [
            "customer", "name", "currency", "billing_mode", "credit_limit", "balance",
            "out_of_credit", "low_balance_threshold",
        ]  # fmt: skip
        read_only_fields = ["name", "currency", "billing_mode", "credit_limit"]

    def get_out_of_credit(self, customer: Customer) -> bool:
        return out_of_credit(
            billing_mode=customer.billing_mode,
            credit_limit=customer.credit_limit,
            balance=customer.balance_amount,  # type: ignore[attr-defined]
        )


class InvoiceLineSerializer(serializers.ModelSerializer):
    class Meta:
        model = InvoiceLine
        fields = ["kind", "description", "quantity", "minutes", "amount"]


class InvoiceSerializer(serializers.ModelSerializer):
    lines = InvoiceLineSerializer(many=True, read_only=True)

    class Meta:
        model = Invoice
        fields = [
            "id", "customer", "kind", "status", "number", "period", "currency", "total",
            "corrects", "created_at", "issued_at", "lines",
        ]  # fmt: skip
        read_only_fields = fields


class InvoiceDraftSerializer(serializers.Serializer):
    customer = serializers.PrimaryKeyRelatedField(queryset=Customer.objects.all())
    period = serializers.DateField(help_text="Any day of the month to bill.")


class CreditNoteSerializer(serializers.Serializer):
    amount = serializers.DecimalField(
        max_digits=16,
        decimal_places=4,
        required=False,
        help_text="Default: the whole invoice.",
    )
    note = serializers.CharField(max_length=400)


class UsageParamsSerializer(serializers.Serializer):
    format = serializers.ChoiceField(choices=["json", "csv"], default="json")


class UsageRowSerializer(serializers.Serializer):
    customer = serializers.IntegerField(allow_null=True)
    customer_name = serializers.CharField(allow_null=True)
    destination = serializers.CharField(allow_null=True)
    prefix = serializers.CharField(allow_null=True)
    currency = serializers.CharField()
    calls = serializers.IntegerField()
    billed_minutes = serializers.DecimalField(max_digits=16, decimal_places=2)
    amount = serializers.DecimalField(max_digits=16, decimal_places=4, allow_null=True)
    unrated_reason = serializers.CharField()
