"""API views of the billing app: rate decks (operators'), balances and the ledger, invoices.

Customers read their own: the decks assigned to them and their rows, their balance, ledger and
invoices (the `billing` role exists for this). Money moves and price lists change only by staff.
"""

from typing import Any

from django.db.models import DecimalField, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.http import HttpResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import Customer
from core.tenancy import Caller, get_caller
from core.viewsets import TenantScopedViewSet

from .. import documents, services
from ..filtersets import (
    InvoiceFilterSet,
    LedgerEntryFilterSet,
    RateAssignmentFilterSet,
    RateDeckFilterSet,
    RateFilterSet,
)
from ..models import Balance, Invoice, LedgerEntry, Rate, RateAssignment, RateDeck
from ..rate_import import RateImportError
from . import serializers as s


class _StaffWrites:
    """Customers read; only operators write."""

    def check_permissions(self, request: Request) -> None:
        super().check_permissions(request)  # type: ignore[misc]
        caller = get_caller(request)
        if request.method not in ("GET", "HEAD", "OPTIONS") and not (caller and caller.is_staff):
            raise PermissionDenied("Only operators change billing data.")


def _assigned_decks(caller: Caller) -> QuerySet[RateAssignment]:
    return RateAssignment.objects.filter(
        customer_id=caller.customer.pk if caller.customer else None
    )


class RateDeckViewSet(_StaffWrites, TenantScopedViewSet):
    """Rate decks. Customers see the decks that price their calls."""

    queryset = RateDeck.objects.all()
    serializer_class = s.RateDeckSerializer
    filterset_class = RateDeckFilterSet
    search_fields = ["name"]
    ordering_fields = ["name", "created_at"]

    def get_queryset(self) -> QuerySet[RateDeck]:
        queryset = RateDeck.objects.all()
        if not self.caller.is_staff:
            queryset = queryset.filter(pk__in=_assigned_decks(self.caller).values("deck"))
        return queryset

    @extend_schema(
        request=s.RateImportSerializer,
        responses={
            200: s.RateImportResultSerializer,
            400: OpenApiResponse(s.RateImportErrorSerializer, description="Every bad line."),
        },
    )
    @action(detail=True, methods=["post"], url_path="import")
    def import_rates(self, request: Request, pk: str | None = None) -> Response:
        """Load rates from CSV, all or nothing; a 400 lists every bad line and column."""
        deck = self.get_object()
        body = s.RateImportSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            count = services.rate_deck_import(
                actor=self.caller,
                deck=deck,
                text=body.validated_data["csv"],
                replace=body.validated_data["replace"],
            )
        except RateImportError as error:
            # The shape of the number import's errors: a list under the field, one per line.
            errors = {"csv": [e.as_dict() for e in error.errors]}
            return Response(errors, status=status.HTTP_400_BAD_REQUEST)
        return Response({"imported": count})


class RateViewSet(viewsets.ReadOnlyModelViewSet):
    """Rows of the decks the caller may read (change them by importing)."""

    queryset = Rate.objects.all()
    serializer_class = s.RateSerializer
    filterset_class = RateFilterSet
    ordering_fields = ["prefix", "effective_from"]

    def get_queryset(self) -> QuerySet[Rate]:
        caller = get_caller(self.request)
        assert caller is not None
        queryset = Rate.objects.all()
        if not caller.is_staff:
            queryset = queryset.filter(deck__in=_assigned_decks(caller).values("deck"))
        return queryset


class RateAssignmentViewSet(_StaffWrites, TenantScopedViewSet):
    queryset = RateAssignment.objects.select_related("deck")
    serializer_class = s.RateAssignmentSerializer
    filterset_class = RateAssignmentFilterSet
    http_method_names = ["get", "post", "delete", "head", "options"]
    ordering_fields = ["valid_from"]

    def perform_create(self, serializer: Any) -> None:
        data = serializer.validated_data
        try:
            serializer.instance = services.rate_assignment_create(actor=self.caller, **data)
        except services.ValidationError as error:
            raise ValidationError(error.message_dict) from error


class LedgerEntryViewSet(_StaffWrites, TenantScopedViewSet):
    """The balance ledger: read by the customer; operators post top-ups, refunds and
    adjustments (usage and recurring charges are posted by the platform). Entries never change."""

    queryset = LedgerEntry.objects.all()
    filterset_class = LedgerEntryFilterSet
    http_method_names = ["get", "post", "head", "options"]
    ordering_fields = ["created_at", "amount"]

    def get_serializer_class(self) -> Any:
        if self.request.method == "POST":
            return s.LedgerEntrySerializer
        return s.LedgerEntryReadSerializer

    def perform_create(self, serializer: Any) -> None:
        data = serializer.validated_data
        serializer.instance = services.ledger_post(
            actor=self.caller,
            customer=data["customer"],
            kind=data["kind"],
            amount=data["amount"],
            note=data["note"],
        )


class BalanceViewSet(_StaffWrites, TenantScopedViewSet):
    """Each customer's balance (derived from its ledger), whether its calls are refused for
    credit, and its low-balance threshold (staff set it with PATCH)."""

    queryset = Customer.objects.all()
    serializer_class = s.BalanceSerializer
    http_method_names = ["get", "patch", "head", "options"]
    ordering_fields = ["name"]

    def get_queryset(self) -> QuerySet[Customer]:
        balance = Balance.objects.filter(customer=OuterRef("pk"))
        money = DecimalField(max_digits=16, decimal_places=4)
        return (
            super()
            .get_queryset()
            .annotate(
                balance_amount=Coalesce(
                    Subquery(balance.values("amount")), Value(0), output_field=money
                ),
                balance_threshold=Subquery(balance.values("low_balance_threshold")),
            )
        )

    def perform_update(self, serializer: Any) -> None:
        customer = serializer.instance
        threshold = serializer.validated_data.get("balance_threshold")
        services.balance_set_threshold(actor=self.caller, customer=customer, threshold=threshold)
        serializer.instance = self.get_queryset().get(pk=customer.pk)


class InvoiceViewSet(_StaffWrites, TenantScopedViewSet):
    """Monthly invoices and credit notes. Operators build drafts, issue them (numbered without
    gaps, frozen) and credit them; customers read theirs, as JSON, CSV or PDF."""

    queryset = Invoice.objects.select_related("customer").prefetch_related("lines")
    serializer_class = s.InvoiceSerializer
    filterset_class = InvoiceFilterSet
    http_method_names = ["get", "post", "head", "options"]
    ordering_fields = ["period", "number"]

    def _invoice_error(self, error: services.InvoiceError) -> Response:
        return Response({"detail": str(error)}, status=status.HTTP_409_CONFLICT)

    @extend_schema(request=s.InvoiceDraftSerializer, responses={201: s.InvoiceSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Build (or rebuild) the draft invoice of a customer and month."""
        body = s.InvoiceDraftSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            invoice = services.invoice_draft(actor=self.caller, **body.validated_data)
        except services.InvoiceError as error:
            return self._invoice_error(error)
        return Response(self.get_serializer(invoice).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: s.InvoiceSerializer})
    @action(detail=True, methods=["post"])
    def issue(self, request: Request, pk: str | None = None) -> Response:
        try:
            invoice = services.invoice_issue(actor=self.caller, invoice=self.get_object())
        except services.InvoiceError as error:
            return self._invoice_error(error)
        return Response(self.get_serializer(invoice).data)

    @extend_schema(request=s.CreditNoteSerializer, responses={201: s.InvoiceSerializer})
    @action(detail=True, methods=["post"], url_path="credit-note")
    def credit_note(self, request: Request, pk: str | None = None) -> Response:
        body = s.CreditNoteSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            credit = services.invoice_credit_note(
                actor=self.caller, invoice=self.get_object(), **body.validated_data
            )
        except services.InvoiceError as error:
            return self._invoice_error(error)
        return Response(self.get_serializer(credit).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={(200, "text/csv"): bytes})
    @action(detail=True, methods=["get"], url_path="csv")
    def as_csv(self, request: Request, pk: str | None = None) -> HttpResponse:
        invoice = self.get_object()
        response = HttpResponse(documents.invoice_csv(invoice), content_type="text/csv")
        response["Content-Disposition"] = f'attachment; filename="{_filename(invoice)}.csv"'
        return response

    @extend_schema(responses={(200, "application/pdf"): bytes})
    @action(detail=True, methods=["get"], url_path="pdf")
    def as_pdf(self, request: Request, pk: str | None = None) -> HttpResponse:
        invoice = self.get_object()
        response = HttpResponse(documents.invoice_pdf(invoice), content_type="application/pdf")
        response["Content-Disposition"] = f'attachment; filename="{_filename(invoice)}.pdf"'
        return response


def _filename(invoice: Invoice) -> str:
    label = invoice.number or f"draft-{invoice.pk}"
    return f"{invoice.kind}-{label}-{invoice.period:%Y-%m}"
