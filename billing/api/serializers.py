"""API representations of rate decks, the ledger, balances and invoices."""

from decimal import Decimal
from typing import Any

from rest_framework import serializers

from accounts.models import Customer
from trunking.models import Trunk

from ..models import Invoice, InvoiceLine, LedgerEntry, Rate, RateAssignment, RateDeck
from ..selectors import out_of_credit


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
