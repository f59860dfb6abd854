"""Operators' admin for call detail records and their exports: read-only, and mindful of a
table of millions.

A page load neither counts the whole table nor reads it for filter choices: no full result
count, filter choices that are fixed or drawn from recent rows, newest-first order on an index.
Every filter of the CDR list is a filter of `filtersets.CdrFilterSet` (the API's), applied by
`FilterSetListFilter`, so ``?number=``, ``?final_code=4xx``, ``?since=`` ... mean the same in
both. The export page streams the filtered list, or queues an `ExportJob` when it is larger
than ``CDR_EXPORT_JOB_THRESHOLD_ROWS``, whose page shows a progress bar, then the download.
"""

from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin.options import IncorrectLookupParameters
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseBase, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from accounts.models import Customer
from core.admin import AuditedModelAdmin, admin_caller
from trunking.validators import normalize_e164

from . import exports, services
from .choices import ExportFormat
from .filtersets import CdrFilterSet, filter_cdrs
from .models import (
    Balance,
    Cdr,
    CdrIngestProgress,
    CdrQuarantine,
    ExportJob,
    Invoice,
    InvoiceLine,
    LedgerEntry,
    Rate,
    RateAssignment,
    RateDeck,
)
from .rate_import import COLUMNS, RateImportError

# Reason codes offered by the filter are those seen in this recent window (an index range on
# setup_at); a DISTINCT over every CDR would read the whole table.
REASON_FILTER_WINDOW = timedelta(days=7)


class FilterSetListFilter(admin.SimpleListFilter):
    """One parameter of `CdrFilterSet` as an admin list filter.

    The admin passes the parameter through the FilterSet, which validates and applies it
    exactly as the API does. A filter without ``lookups`` is not shown in the sidebar but still
    applies its parameter from the URL (the period, a trunk, a number).
    """

    options: ClassVar[list[tuple[str, str]]] = []

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return list(self.options)

    def queryset(self, request: HttpRequest, queryset: QuerySet[Cdr]) -> QuerySet[Cdr]:
        value = self.value()
        if value in (None, ""):
            return queryset
        params = {self.parameter_name: value}
        if self.parameter_name == "number" and request.GET.get("region"):
            params["region"] = request.GET["region"]
        try:
            return filter_cdrs(queryset, params, require_period=False)
        except ValidationError as exc:
            raise IncorrectLookupParameters(exc) from exc


class HiddenFilterSetListFilter(FilterSetListFilter):
    """Applies its parameter; shows nothing (the admin skips filters without output)."""

    template = "admin/billing/hidden_filter.html"

    def has_output(self) -> bool:
        return True


def _list_filter(
    name: str, title: str, base: type[FilterSetListFilter] = FilterSetListFilter, **attrs: Any
) -> type[FilterSetListFilter]:
    return type(
        f"{name.title().replace('_', '')}Filter",
        (base,),
        {"title": title, "parameter_name": name, **attrs},
    )


class ReasonFilter(FilterSetListFilter):
    title = "reason"
    parameter_name = "reason"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        since = timezone.now() - REASON_FILTER_WINDOW
        reasons = set(
            Cdr.objects.filter(setup_at__gte=since)
            .order_by()
            .values_list("reason", flat=True)
            .distinct()
        )
        if self.value():
            reasons.add(self.value())
        return [(reason, reason) for reason in sorted(reasons)]


class CustomerFilter(FilterSetListFilter):
    title = "customer"
    parameter_name = "customer"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(str(pk), name) for pk, name in Customer.objects.values_list("pk", "name")]


DirectionFilter = _list_filter(
    "direction", "direction", options=[("inbound", "Inbound"), ("outbound", "Outbound")]
)
AnsweredFilter = _list_filter("answered", "answered", options=[("true", "Yes"), ("false", "No")])
FinalCodeFilter = _list_filter(
    "final_code",
    "final code",
    options=[
        ("2xx", "2xx answered"),
        ("3xx", "3xx"),
        ("4xx", "4xx"),
        ("5xx", "5xx"),
        ("6xx", "6xx"),
    ],
)
# From the URL only (the export page and links set them); the sidebar has no room for inputs.
HIDDEN_FILTERS = [
    _list_filter(name, name, HiddenFilterSetListFilter)
    for name in ("since", "until", "trunk", "number", "region", "edge")
]


def decision_trace_html(cdr: Cdr) -> SafeString:
    """The routes tried, in order, and how the call ended, as a small table."""
    rows = format_html_join(
        "",
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
        (
            (
                n,
                route.get("target", ""),
                route.get("kind", ""),
                route.get("status") if route.get("status") is not None else "no answer",
                route.get("reason", ""),
            )
            for n, route in enumerate(cdr.routes or [], start=1)
        ),
    )
    if not cdr.routes:
        rows = mark_safe('<tr><td colspan="5">No route was tried.</td></tr>')  # a constant
    outcome = format_html(
        "Final answer to the caller: <strong>{} </strong> ({}){}{}.",
        cdr.final_code,
        cdr.reason,
        format_html(", answered by {}", cdr.answered_by) if cdr.answered_by else "",
        format_html(", hung up by the {}", cdr.hangup_side) if cdr.hangup_side else "",
    )
    return format_html(
        '<table class="decision-trace"><thead><tr><th>#</th><th>target</th><th>kind</th>'
        "<th>status</th><th>why</th></tr></thead><tbody>{}</tbody></table><p>{}</p>",
        rows,
        outcome,
    )


class ExportForm(forms.Form):
    format = forms.ChoiceField(choices=ExportFormat.choices, initial=ExportFormat.CSV)
    columns = forms.MultipleChoiceField(
        choices=[(name, name) for name in exports.EXPORT_COLUMNS],
        initial=list(exports.DEFAULT_EXPORT_COLUMNS),
        widget=forms.CheckboxSelectMultiple,
    )


@admin.register(Cdr)
class CdrAdmin(admin.ModelAdmin):
    list_display = [
        "setup_at",
        "direction",
        "customer",
        "trunk",
        "caller",
        "callee",
        "final_code",
        "reason",
        "billable_seconds",
        "hangup_side",
        "edge",
    ]
    list_filter = [
        DirectionFilter,
        AnsweredFilter,
        FinalCodeFilter,
        ReasonFilter,
        CustomerFilter,
        *HIDDEN_FILTERS,
    ]
    list_select_related = ["customer", "trunk"]
    # Ids match whole values; numbers may be typed in part, or whole in any spelling.
    search_fields = [
        "=call_id",
        "=a_call_id",
        "=b_call_id",
        "caller_e164",
        "callee_e164",
        "caller_raw",
        "callee_raw",
    ]
    date_hierarchy = "setup_at"
    show_full_result_count = False
    change_list_template = "admin/billing/cdr/change_list.html"
    readonly_fields = ["decision_trace"]
    fieldsets = [
        (None, {"fields": ["edge", "call_id", "a_call_id", "b_call_id", "config_version"]}),
        ("Who", {"fields": ["direction", "customer", "trunk", "source_ip", "source_port"]}),
        ("Numbers", {"fields": ["caller_e164", "callee_e164", "caller_raw", "callee_raw"]}),
        ("Decision trace", {"fields": ["decision_trace"]}),
        ("Routing", {"fields": ["routes", "answered_by", "codecs", "media"]}),
        ("Times", {"fields": ["setup_at", "ringing_at", "answer_at", "end_at", "ingested_at"]}),
        (
            "Outcome",
            {
                "fields": [
                    "final_code",
                    "reason",
                    "hangup_side",
                    "duration_ms",
                    "billable_seconds",
                ]
            },
        ),
    ]

    @admin.display(ordering="caller_e164")
    def caller(self, cdr: Cdr) -> str:
        return cdr.caller_e164 or cdr.caller_raw

    @admin.display(ordering="callee_e164")
    def callee(self, cdr: Cdr) -> str:
        return cdr.callee_e164 or cdr.callee_raw

    @admin.display(description="routes tried and outcome")
    def decision_trace(self, cdr: Cdr) -> SafeString:
        return decision_trace_html(cdr)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Cdr], search_term: str
    ) -> tuple[QuerySet[Cdr], bool]:
        # A whole number in any spelling ("+1 (415) 555-0100") is the API's number filter.
        if any(c.isdigit() for c in search_term):
            try:
                e164 = normalize_e164(search_term)
            except ValidationError:
                pass
            else:
                return filter_cdrs(queryset, {"number": e164}, require_period=False), False
        return super().get_search_results(request, queryset, search_term)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_urls(self) -> list[Any]:
        return [
            path(
                "export/",
                self.admin_site.admin_view(self.export_view),
                name="billing_cdr_export",
            ),
            *super().get_urls(),
        ]

    def export_view(self, request: HttpRequest) -> HttpResponseBase:
        """Export the list as filtered (FilterSet parameters and the date drill-down)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        filters = _export_filters(request)
        form = ExportForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            fmt, columns = form.cleaned_data["format"], form.cleaned_data["columns"]
            try:
                queryset = filter_cdrs(Cdr.objects.all(), filters, require_period=False)
            except ValidationError as exc:
                messages.error(request, "; ".join(exc.messages))
                return HttpResponseRedirect(reverse("admin:billing_cdr_changelist"))
            if queryset.count() <= settings.CDR_EXPORT_JOB_THRESHOLD_ROWS:
                return exports.export_response(request, queryset, fmt=fmt, columns=columns)
            job = exports.cdr_export_job_create(
                actor=admin_caller(request),
                fmt=fmt,
                columns=columns,
                filters=filters,
                require_period=False,
            )
            return HttpResponseRedirect(reverse("admin:billing_exportjob_progress", args=[job.pk]))
        context = {
            **self.admin_site.each_context(request),
            "title": "Export call detail records",
            "opts": self.opts,
            "form": form,
            "filters": filters,
            "threshold": settings.CDR_EXPORT_JOB_THRESHOLD_ROWS,
        }
        return TemplateResponse(request, "admin/billing/cdr/export.html", context)


def _export_filters(request: HttpRequest) -> dict[str, str]:
    """The FilterSet parameters of the list being exported, the date drill-down as a period."""
    source = request.GET
    filters = {
        name: source[name]
        for name in CdrFilterSet.base_filters
        if source.get(name) not in (None, "")
    }
    year, month, day = (source.get(f"setup_at__{part}") for part in ("year", "month", "day"))
    if year and "since" not in filters:
        start = datetime(int(year), int(month or 1), int(day or 1), tzinfo=UTC)
        if day:
            end = start + timedelta(days=1)
        elif month:
            end = (start + timedelta(days=32)).replace(day=1)
        else:
            end = start.replace(year=start.year + 1)
        filters |= {"since": start.isoformat(), "until": end.isoformat()}
    return filters


@admin.register(ExportJob)
class ExportJobAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "created_at",
        "customer",
        "format",
        "status",
        "progress_bar",
        "rows_total",
    ]
    list_filter = ["status", "format"]
    list_select_related = ["customer"]
    readonly_fields = [
        field.name for field in ExportJob._meta.concrete_fields if field.name != "id"
    ] + ["progress_bar", "download"]

    @admin.display(description="progress")
    def progress_bar(self, job: ExportJob) -> SafeString:
        return format_html(
            '<progress max="100" value="{}"></progress> <a href="{}">{} %</a>',
            round(job.progress * 100),
            reverse("admin:billing_exportjob_progress", args=[job.pk]),
            round(job.progress * 100),
        )

    @admin.display(description="file")
    def download(self, job: ExportJob) -> SafeString | str:
        if exports.export_job_path(job) is None:
            return "—"
        url = reverse("cdrexport-download", args=[job.pk])
        return format_html('<a href="{}">download</a>', url)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # files go when they expire; the row stays as the record of the export

    def get_urls(self) -> list[Any]:
        return [
            path(
                "<int:pk>/progress/",
                self.admin_site.admin_view(self.progress_view),
                name="billing_exportjob_progress",
            ),
            *super().get_urls(),
        ]

    def progress_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        """A progress bar that follows the job (polling the API), then the download link."""
        job = self.get_object(request, str(pk))
        if job is None or not self.has_view_permission(request, job):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "title": f"CDR export #{job.pk}",
            "opts": self.opts,
            "job": job,
            "percent": round(job.progress * 100),
            "status_url": reverse("cdrexport-detail", args=[job.pk]),
            "download_url": reverse("cdrexport-download", args=[job.pk]),
        }
        return TemplateResponse(request, "admin/billing/exportjob/progress.html", context)


# --- rating, balances and invoices ---------------------------------------------------------------


class RateImportForm(forms.Form):
    file = forms.FileField(help_text="CSV with a header line: " + ", ".join(COLUMNS))
    replace = forms.BooleanField(required=False, help_text="Delete the deck's rows first.")


class RateInline(admin.TabularInline):
    model = Rate
    extra = 0
    max_num = 0  # rows change by import, so a deck of 50,000 rows is never a form
    can_delete = False
    fields = readonly_fields = [
        "prefix", "destination", "rate_per_minute", "connect_fee", "first_block", "increment",
        "effective_from", "effective_to",
    ]  # fmt: skip
    show_change_link = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Rate]:
        return super().get_queryset(request).order_by("prefix")[:200]  # type: ignore[return-value]


@admin.register(RateDeck)
class RateDeckAdmin(AuditedModelAdmin):
    list_display = ["name", "currency", "rate_count", "updated_at"]
    search_fields = ["name"]
    readonly_fields = ["created_at", "updated_at"]
    actions = ["import_rates"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[RateDeck]:
        return super().get_queryset(request).annotate(rate_count=Count("rates"))

    @admin.display(description="rates", ordering="rate_count")
    def rate_count(self, deck: RateDeck) -> int:
        return deck.rate_count  # type: ignore[attr-defined]

    def get_urls(self) -> list[Any]:
        urls = [
            path(
                "<int:deck_id>/import/",
                self.admin_site.admin_view(self.import_view),
                name="billing_ratedeck_import",
            )
        ]
        return urls + super().get_urls()

    @admin.action(description="Import rates from CSV")
    def import_rates(self, request: HttpRequest, queryset: QuerySet[RateDeck]) -> Any:
        deck = queryset.first()
        if queryset.count() != 1 or deck is None:
            self.message_user(request, "Choose one deck to import into.", messages.WARNING)
            return None
        return redirect("admin:billing_ratedeck_import", deck_id=deck.pk)

    def import_view(self, request: HttpRequest, deck_id: int) -> HttpResponse:
        deck = get_object_or_404(RateDeck, pk=deck_id)
        if not self.has_change_permission(request, deck):
            raise PermissionDenied
        errors: list[Any] = []
        form = RateImportForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            text = form.cleaned_data["file"].read().decode("utf-8-sig", errors="replace")
            try:
                count = services.rate_deck_import(
                    actor=admin_caller(request),
                    deck=deck,
                    text=text,
                    replace=form.cleaned_data["replace"],
                )
            except RateImportError as error:
                errors = error.errors
            else:
                self.message_user(request, f"Imported {count} rates into {deck}.")
                return redirect("admin:billing_ratedeck_change", deck.pk)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Import rates into {deck}",
            "deck": deck,
            "form": form,
            "errors": errors,
            "opts": self.model._meta,
        }
        return render(request, "admin/billing/rate_import.html", context)


@admin.register(RateAssignment)
class RateAssignmentAdmin(AuditedModelAdmin):
    list_display = ["customer", "trunk", "deck", "direction", "valid_from"]
    list_filter = ["direction", "deck"]
    list_select_related = ["customer", "trunk", "deck"]
    autocomplete_fields = ["customer", "deck"]


@admin.register(LedgerEntry)
class LedgerEntryAdmin(admin.ModelAdmin):
    """The ledger is append-only: entries are added (by services) and never changed."""

    list_display = [
        "created_at",
        "customer",
        "kind",
        "amount",
        "currency",
        "period",
        "actor",
        "note",
    ]
    list_filter = ["kind", "period"]
    list_select_related = ["customer"]
    search_fields = ["customer__name", "note", "reference"]
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Balance)
class BalanceAdmin(AuditedModelAdmin):
    list_display = ["customer", "amount", "low_balance_threshold", "below_threshold", "updated_at"]
    list_select_related = ["customer"]
    readonly_fields = ["customer", "amount", "below_threshold", "updated_at"]
    fields = ["customer", "amount", "low_balance_threshold", "below_threshold", "updated_at"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class InvoiceLineInline(admin.TabularInline):
    model = InvoiceLine
    extra = 0
    can_delete = False
    fields = readonly_fields = ["kind", "description", "quantity", "minutes", "amount"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Invoice)
class InvoiceAdmin(admin.ModelAdmin):
    list_display = ["__str__", "customer", "period", "status", "total", "currency", "documents"]
    list_filter = ["status", "kind", "period"]
    list_select_related = ["customer"]
    readonly_fields = [
        "customer", "kind", "status", "number", "period", "currency", "total", "corrects",
        "created_at", "issued_at", "documents",
    ]  # fmt: skip
    inlines = [InvoiceLineInline]
    actions = ["issue"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # drafts are built by the API or `manage.py` (services.invoice_draft)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return obj is not None and obj.status == Invoice.Status.DRAFT

    @admin.display(description="documents")
    def documents(self, invoice: Invoice) -> str:
        base = f"/api/v1/invoices/{invoice.pk}"
        return format_html('<a href="{}/pdf/">PDF</a> · <a href="{}/csv/">CSV</a>', base, base)

    @admin.action(description="Issue the selected drafts")
    def issue(self, request: HttpRequest, queryset: QuerySet[Invoice]) -> None:
        actor = admin_caller(request)
        issued = 0
        for invoice in queryset.filter(status=Invoice.Status.DRAFT).order_by("period", "id"):
            services.invoice_issue(actor=actor, invoice=invoice)
            issued += 1
        self.message_user(request, f"Issued {issued} invoice(s).")


# --- the CDR pipeline: what could not be stored, and how far each edge has got ----------------


@admin.register(CdrQuarantine)
class CdrQuarantineAdmin(admin.ModelAdmin):
    """What the CDR pipeline could not store as a plain CDR, and why; read-only but retryable."""

    list_display = ["received_at", "edge", "reason", "stored", "source", "call_id", "short_detail"]
    list_filter = ["reason", "stored", "edge"]
    search_fields = ["=call_id", "=edge", "detail"]
    date_hierarchy = "received_at"
    readonly_fields = [
        "edge", "source", "reason", "detail", "call_id", "line", "stored", "received_at",
        "resolved_at",
    ]  # fmt: skip
    actions = ["retry_ingest"]

    @admin.display(description="detail")
    def short_detail(self, entry: CdrQuarantine) -> str:
        return entry.detail[:100]

    @admin.action(description="Retry ingest (once the cause is fixed)")
    def retry_ingest(self, request: HttpRequest, queryset: QuerySet[CdrQuarantine]) -> None:
        actor = admin_caller(request)
        stored = services.cdr_quarantine_retry(entries=queryset, actor=actor)
        self.message_user(
            request, f"{stored} record(s) stored; those still refused stay with their reason."
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(CdrIngestProgress)
class CdrIngestProgressAdmin(admin.ModelAdmin):
    list_display = [
        "edge", "committed", "duplicates", "quarantined", "last_committed_at",
        "last_call_end_at", "last_lag_seconds",
    ]  # fmt: skip
    search_fields = ["=edge"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
