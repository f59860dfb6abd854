"""Operators' admin for call detail records: read-only, and mindful of a table of millions.

A page load neither counts the whole table nor reads it for filter choices: no full result
count, filter choices that are fixed or drawn from recent rows, newest-first order on an index.
(The date drill-down still groups the rows of the period it shows; monthly partitions, with the
billing issue, bound that.)
"""

from datetime import timedelta
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import path
from django.utils import timezone
from django.utils.html import format_html

from core.admin import AuditedModelAdmin, admin_caller

from . import services
from .models import (
    Balance,
    Cdr,
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


class ReasonFilter(admin.SimpleListFilter):
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

    def queryset(self, request: HttpRequest, queryset: QuerySet[Cdr]) -> QuerySet[Cdr]:
        return queryset.filter(reason=self.value()) if self.value() else queryset


class FinalCodeFilter(admin.SimpleListFilter):
    """By class of the SIP final code (2xx answered, 4xx refused, ...), or one code via the URL."""

    title = "final code"
    parameter_name = "final_code"
    CLASSES = {"2xx": "2xx answered", "3xx": "3xx", "4xx": "4xx", "5xx": "5xx", "6xx": "6xx"}

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return list(self.CLASSES.items())

    def queryset(self, request: HttpRequest, queryset: QuerySet[Cdr]) -> QuerySet[Cdr]:
        value = self.value()
        if value in self.CLASSES:
            low = int(value[0]) * 100
            return queryset.filter(final_code__gte=low, final_code__lt=low + 100)
        if value and value.isdigit():
            return queryset.filter(final_code=int(value))
        return queryset


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
    list_filter = ["direction", ReasonFilter, FinalCodeFilter, "customer"]
    list_select_related = ["customer", "trunk"]
    # Ids match whole values; numbers may be typed in part.
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
    fieldsets = [
        (None, {"fields": ["edge", "call_id", "a_call_id", "b_call_id", "config_version"]}),
        ("Who", {"fields": ["direction", "customer", "trunk", "source_ip", "source_port"]}),
        ("Numbers", {"fields": ["caller_e164", "callee_e164", "caller_raw", "callee_raw"]}),
        ("Routing", {"fields": ["routes", "answered_by", "codecs"]}),
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

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


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
