"""Operators' admin for call detail records: read-only, and mindful of a table of millions.

A page load neither counts the whole table nor reads it for filter choices: no full result
count, filter choices that are fixed or drawn from recent rows, newest-first order on an index.
(The date drill-down still groups the rows of the period it shows; monthly partitions, with the
billing issue, bound that.)
"""

from datetime import timedelta
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from .models import Cdr

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

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
