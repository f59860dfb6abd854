"""FilterSets of the billing app, shared by the API, the admin's CDR list and export jobs.

`CdrFilterSet` is the one definition of how call history is filtered: the CDR list, its
summary and its exports (streamed or as a job) in the API, and the admin's CDR list (through
`admin_list_filter`), all apply these filters, so a parameter means the same everywhere.

The API requires a period (``since`` and ``until``) no longer than ``CDR_QUERY_MAX_DAYS``: a
CDR table holds years of calls, and every query must stay within a few monthly partitions and
an index range. The admin narrows by its date drill-down instead, so there the period is
optional (`CdrFilterSet` with ``require_period=False``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import django_filters
from django import forms
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db.models import Q, QuerySet

from trunking.validators import normalize_e164, validate_region

from .choices import DIRECTION_CHOICES
from .models import Cdr, Invoice, LedgerEntry, Rate, RateAssignment, RateDeck

# "4xx" matches every final code of that class; "486" one code.
_CODE_CLASSES = {f"{n}xx": n * 100 for n in range(1, 7)}


def _final_code_range(value: str) -> tuple[int, int] | None:
    """[low, high) of the final codes ``value`` names, or None if it names none."""
    text = (value or "").strip().lower()
    if text in _CODE_CLASSES:
        return _CODE_CLASSES[text], _CODE_CLASSES[text] + 100
    if text.isdigit() and 100 <= int(text) <= 699:
        return int(text), int(text) + 1
    return None


def validate_final_code(value: str) -> None:
    if _final_code_range(value) is None:
        raise ValidationError(f"'{value}' is not a SIP final code (100-699) or a class like 4xx.")


class StrictBooleanField(forms.Field):
    """true/false (also 1/0, yes/no); anything else is an error, not "no filter"."""

    VALUES = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}

    def to_python(self, value: Any) -> bool | None:
        if value in (None, ""):
            return None
        if isinstance(value, bool):
            return value
        try:
            return self.VALUES[str(value).strip().lower()]
        except KeyError:
            raise ValidationError(f"'{value}' is not true or false.", code="invalid") from None


class StrictBooleanFilter(django_filters.BooleanFilter):
    field_class = StrictBooleanField


class CdrFilterForm(forms.Form):
    """Cross-field checks of the period: both ends, in order, no longer than the cap."""

    require_period = True

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        since, until = data.get("since"), data.get("until")
        if self.require_period:
            for name in ("since", "until"):
                if not data.get(name) and name not in self.errors:
                    self.add_error(name, "Give the period's start and end (ISO 8601, UTC).")
        if since and until:
            if until <= since:
                self.add_error("until", "until must be after since.")
            elif until - since > timedelta(days=settings.CDR_QUERY_MAX_DAYS):
                self.add_error(
                    "until",
                    f"The period may span at most {settings.CDR_QUERY_MAX_DAYS} days; "
                    "ask for several periods.",
                )
        region = data.get("region")
        number = self.data.get("number")
        if number and "number" not in self.errors:
            try:
                data["number"] = normalize_e164(str(number), region or None)
            except ValidationError as exc:
                self.add_error("number", exc)
        return data


class CdrFilterSet(django_filters.FilterSet):
    """Call history filters. ``since``/``until`` bound ``setup_at`` (start inclusive)."""

    since = django_filters.IsoDateTimeFilter(
        field_name="setup_at", lookup_expr="gte", help_text="Start of the period (ISO 8601)."
    )
    until = django_filters.IsoDateTimeFilter(
        field_name="setup_at", lookup_expr="lt", help_text="End of the period, exclusive."
    )
    customer = django_filters.NumberFilter(field_name="customer_id")
    # By id, not a choice among trunks: another tenant's trunk simply matches nothing, and
    # a trunk deleted since still finds its calls.
    trunk = django_filters.NumberFilter(field_name="trunk_id")
    direction = django_filters.ChoiceFilter(choices=DIRECTION_CHOICES)
    number = django_filters.CharFilter(
        method="filter_number",
        help_text="Caller or callee, any spelling (+1 415 555-0100, 0044...); matched as E.164.",
    )
    region = django_filters.CharFilter(
        method="filter_noop",
        validators=[validate_region],
        help_text="ISO country in which a national spelling of number is read (e.g. GB).",
    )
    final_code = django_filters.CharFilter(
        method="filter_final_code",
        validators=[validate_final_code],
        help_text="A SIP final code (486) or a class (4xx).",
    )
    reason = django_filters.CharFilter(help_text="The machine-readable reason, e.g. cps_limit.")
    answered = StrictBooleanFilter(field_name="answer_at", lookup_expr="isnull", exclude=True)
    edge = django_filters.CharFilter()

    class Meta:
        model = Cdr
        fields = [
            "since",
            "until",
            "customer",
            "trunk",
            "direction",
            "number",
            "region",
            "final_code",
            "reason",
            "answered",
            "edge",
        ]
        form = CdrFilterForm

    def __init__(self, *args: Any, require_period: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.require_period = require_period

    def get_form_class(self) -> type[forms.Form]:
        form_class = super().get_form_class()
        return type(form_class.__name__, (form_class,), {"require_period": self.require_period})

    def filter_number(self, queryset: QuerySet[Cdr], name: str, value: str) -> QuerySet[Cdr]:
        # The form's clean() has already turned the value into E.164.
        return queryset.filter(Q(caller_e164=value) | Q(callee_e164=value))

    def filter_noop(self, queryset: QuerySet[Cdr], name: str, value: str) -> QuerySet[Cdr]:
        return queryset

    def filter_final_code(self, queryset: QuerySet[Cdr], name: str, value: str) -> QuerySet[Cdr]:
        low, high = _final_code_range(value) or (0, 0)
        return queryset.filter(final_code__gte=low, final_code__lt=high)


def filter_cdrs(
    queryset: QuerySet[Cdr], params: Any, *, require_period: bool = True
) -> QuerySet[Cdr]:
    """``queryset`` narrowed by ``params``; `ValidationError` naming the fields if they are bad.

    For callers outside a DRF view (export jobs, the admin's export page).
    """
    filterset = CdrFilterSet(params, queryset=queryset, require_period=require_period)
    if not filterset.is_valid():
        raise ValidationError(
            {name: [str(m) for m in messages] for name, messages in filterset.errors.items()}
        )
    return filterset.qs


class RateDeckFilterSet(django_filters.FilterSet):
    name = django_filters.CharFilter(lookup_expr="icontains")

    class Meta:
        model = RateDeck
        fields = ["name", "currency"]


class RateFilterSet(django_filters.FilterSet):
    prefix = django_filters.CharFilter(lookup_expr="startswith")
    destination = django_filters.CharFilter(lookup_expr="icontains")

    class Meta:
        model = Rate
        fields = ["deck", "prefix", "destination"]


class RateAssignmentFilterSet(django_filters.FilterSet):
    class Meta:
        model = RateAssignment
        fields = ["customer", "trunk", "deck", "direction"]


class LedgerEntryFilterSet(django_filters.FilterSet):
    since = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = LedgerEntry
        fields = ["customer", "kind", "period", "since", "until"]


class InvoiceFilterSet(django_filters.FilterSet):
    class Meta:
        model = Invoice
        fields = ["customer", "kind", "status", "period"]
