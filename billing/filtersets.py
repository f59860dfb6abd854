"""FilterSets of the billing app, shared by the API and list pages."""

import django_filters

from .models import Invoice, LedgerEntry, Rate, RateAssignment, RateDeck


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
