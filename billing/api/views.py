"""API views of the billing app: call history, its summary and exports, export jobs.

Every member of a customer (owner, admin, billing, read_only) reads its calls; staff read all.
Exports are reads, so every reader may also run an export job.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import DecimalField, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.http import HttpResponse, HttpResponseBase
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.pagination import CursorPagination
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.models import Customer
from core.filters import FilterBackend
from core.permissions import TenantPermission
from core.tenancy import Caller, get_caller
from core.viewsets import TenantScopedReadOnlyViewSet, TenantScopedViewSet

from .. import documents, exports, services
from ..choices import ExportStatus
from ..filtersets import (
    CdrFilterSet,
    InvoiceFilterSet,
    LedgerEntryFilterSet,
    RateAssignmentFilterSet,
    RateDeckFilterSet,
    RateFilterSet,
)
from ..models import Balance, Cdr, ExportJob, Invoice, LedgerEntry, Rate, RateAssignment, RateDeck
from ..rate_import import RateImportError
from ..selectors import cdr_summary, usage_by_destination
from . import serializers as s
from .serializers import (
    CdrDetailSerializer,
    CdrSerializer,
    CdrSummarySerializer,
    ExportJobCreateSerializer,
    ExportJobSerializer,
    ExportParamsSerializer,
    UsageParamsSerializer,
    UsageRowSerializer,
)


class CdrCursorPagination(CursorPagination):
    """Newest first; a cursor keeps its place while new calls arrive, and no page counts."""

    ordering = ("-setup_at", "-id")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 1000


class _FileRenderer(BaseRenderer):
    """Lets ``?format=csv|jsonl`` through content negotiation; the view streams the body."""

    def render(self, data: Any, accepted_media_type: str | None = None, **kw: Any) -> bytes:
        return b""


class CsvRenderer(_FileRenderer):
    media_type = "text/csv"
    format = "csv"


class JsonLinesRenderer(_FileRenderer):
    media_type = "application/jsonl"
    format = "jsonl"


class CdrViewSet(TenantScopedReadOnlyViewSet):
    """Call history: one record per call attempt, admitted or not, newest first.

    The list, the summary and the export require a period (``since``, ``until``)."""

    queryset = Cdr.objects.all()
    serializer_class = CdrSerializer
    filterset_class = CdrFilterSet
    filter_backends = [FilterBackend]
    pagination_class = CdrCursorPagination

    def get_queryset(self) -> QuerySet[Cdr]:
        queryset = super().get_queryset()
        if self.action in ("list", "retrieve"):
            queryset = queryset.select_related("trunk")
        return queryset

    def get_serializer_class(self) -> type[serializers.BaseSerializer]:
        return CdrDetailSerializer if self.action == "retrieve" else CdrSerializer

    def filter_queryset(self, queryset: QuerySet[Cdr]) -> QuerySet[Cdr]:
        if self.action == "retrieve":  # an id needs no period
            return queryset
        return super().filter_queryset(queryset)

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        if self.action in ("export", "usage"):  # the body is streamed; errors are JSON
            return (JSONRenderer(), JSONRenderer.media_type)
        return super().perform_content_negotiation(request, force)

    @extend_schema(responses=CdrSummarySerializer)
    @action(detail=False)
    def summary(self, request: Request) -> Response:
        """Attempts, answered, ASR, ACD and minutes for the period, by trunk and by reason."""
        queryset = self.filter_queryset(self.get_queryset())
        figures = cdr_summary(queryset=queryset)
        period = CdrFilterSet(request.query_params).form
        period.is_valid()
        figures |= {"since": period.cleaned_data["since"], "until": period.cleaned_data["until"]}
        return Response(CdrSummarySerializer(figures).data)

    @extend_schema(
        parameters=[ExportParamsSerializer],
        responses={(200, "text/csv"): str, (200, "application/jsonl"): str},
    )
    @action(detail=False, renderer_classes=[JSONRenderer, CsvRenderer, JsonLinesRenderer])
    def export(self, request: Request) -> HttpResponseBase:
        """The filtered calls as CSV or JSON Lines, oldest first, streamed.

        More than ``CDR_EXPORT_JOB_THRESHOLD_ROWS`` rows: 400; run an export job instead."""
        params = ExportParamsSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        queryset = self.filter_queryset(self.get_queryset())
        rows = queryset.count()
        if rows > settings.CDR_EXPORT_JOB_THRESHOLD_ROWS:
            raise ValidationError({"export": [exports.export_too_large_message(rows)]})
        return exports.export_response(
            request._request,
            queryset,
            fmt=params.validated_data["format"],
            columns=params.validated_data["columns"],
        )

    @extend_schema(
        parameters=[UsageParamsSerializer],
        responses={200: UsageRowSerializer(many=True), (200, "text/csv"): str},
    )
    @action(detail=False)
    def usage(self, request: Request) -> HttpResponseBase:
        """Finance's export: rated usage for the period by customer, destination and currency
        (calls, billed minutes, amount), from the calls answered in it. ``format=csv`` for a
        file. Unrated answered calls are listed by reason, with no amount."""
        params = UsageParamsSerializer(data=request.query_params)
        params.is_valid(raise_exception=True)
        rows = usage_by_destination(queryset=self.filter_queryset(self.get_queryset()))
        data = UsageRowSerializer(rows, many=True).data
        if params.validated_data["format"] != "csv":
            return Response(data)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(UsageRowSerializer().fields))
        writer.writeheader()
        writer.writerows(data)
        response = HttpResponse(out.getvalue(), content_type="text/csv")
        response["Content-Disposition"] = 'attachment; filename="usage.csv"'
        return response


class ReadersMayExport(TenantPermission):
    """Starting an export job is a read: every member may, whatever its role."""

    def has_permission(self, request: Any, view: Any) -> bool:
        if request.method == "POST":
            return get_caller(request) is not None
        return super().has_permission(request, view)


class ExportJobViewSet(mixins.CreateModelMixin, TenantScopedReadOnlyViewSet):
    """CDR exports run as jobs: create one, poll its progress, download its file."""

    queryset = ExportJob.objects.all()
    serializer_class = ExportJobSerializer
    permission_classes = [ReadersMayExport]
    filter_backends: list[Any] = []

    @property
    def caller(self) -> Caller:
        caller = get_caller(self.request)
        assert caller is not None
        return caller

    @extend_schema(request=ExportJobCreateSerializer, responses={201: ExportJobSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Queue an export; the body takes the parameters of ``GET /cdrs/export/``."""
        data = request.data if isinstance(request.data, dict) else {}
        params = ExportJobCreateSerializer(data=data)
        params.is_valid(raise_exception=True)
        filters = {
            name: value
            for name, value in data.items()
            if name in CdrFilterSet.base_filters and value not in (None, "")
        }
        try:
            job = exports.cdr_export_job_create(
                actor=self.caller,
                fmt=params.validated_data["format"],
                columns=params.validated_data["columns"],
                filters=filters,
            )
        except DjangoValidationError as exc:
            raise ValidationError(exc.message_dict) from exc
        body = ExportJobSerializer(job, context=self.get_serializer_context()).data
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(responses={(200, "application/octet-stream"): str})
    @action(detail=True)
    def download(self, request: Request, pk: str | None = None) -> HttpResponseBase:
        """The job's file, once it is done and until it expires (410 after)."""
        job = self.get_object()
        if job.status == ExportStatus.EXPIRED:
            return Response({"detail": "This export has expired."}, status=status.HTTP_410_GONE)
        path = exports.export_job_path(job)
        if path is None:
            return Response(
                {"detail": f"This export is {job.status}, not ready."},
                status=status.HTTP_409_CONFLICT,
            )
        return exports.streaming_response(
            request._request,
            exports.file_chunks(path),
            content_type=exports.CONTENT_TYPES[job.format],
            filename=f"cdr-export-{job.pk}.{job.format}",
        )


class _StaffWrites:
    """Customers read; only operators write."""

    def check_permissions(self, request: Request) -> None:
        super().check_permissions(request)  # type: ignore[misc]
        caller = get_caller(request)
        if request.method not in ("GET", "HEAD", "OPTIONS") and not (caller and caller.is_staff):
            raise PermissionDenied("Only operators change billing data.")


class RateDeckViewSet(_StaffWrites, TenantScopedViewSet):
    """Rate decks. Customers see the decks that price their calls."""

    queryset = RateDeck.objects.all()
    serializer_class = s.RateDeckSerializer
    filterset_class = RateDeckFilterSet
    search_fields = ["name"]
    ordering_fields = ["name", "created_at"]

    def get_queryset(self) -> QuerySet[RateDeck]:
        return super().get_queryset().distinct()  # assigned to the customer more than once

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


class RateViewSet(TenantScopedReadOnlyViewSet):
    """Rows of the decks the caller may read (change them by importing)."""

    queryset = Rate.objects.all()
    serializer_class = s.RateSerializer
    filterset_class = RateFilterSet
    ordering_fields = ["prefix", "effective_from"]

    def get_queryset(self) -> QuerySet[Rate]:
        return super().get_queryset().distinct()


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
