"""FilterSets of the trunking app, shared by the API and list pages."""

from typing import Any

import django_filters

from .models import (
    Carrier,
    CarrierGateway,
    EdgeNode,
    IpAclEntry,
    OriginationUri,
    PhoneNumber,
    SipCredential,
    Trunk,
)


class TrunkFilterSet(django_filters.FilterSet):
    name = django_filters.CharFilter(lookup_expr="icontains")

    class Meta:
        model = Trunk
        fields = ["customer", "name", "status", "registration_allowed", "caller_id_policy"]


class IpAclEntryFilterSet(django_filters.FilterSet):
    class Meta:
        model = IpAclEntry
        fields = ["trunk", "cidr"]


class SipCredentialFilterSet(django_filters.FilterSet):
    class Meta:
        model = SipCredential
        fields = ["trunk", "username", "realm"]


class OriginationUriFilterSet(django_filters.FilterSet):
    class Meta:
        model = OriginationUri
        fields = ["trunk", "enabled", "priority"]


def _as_e164_digits(value: str) -> str:
    """``+1 (415) 555-0100``, ``+1.415.555.0100`` or ``14155550100`` as ``+14155550100``:
    numbers are stored in E.164, so any punctuation of one is the same number."""
    return "+" + "".join(ch for ch in value if ch.isdigit())


class PhoneNumberFilterSet(django_filters.FilterSet):
    number = django_filters.CharFilter(
        method="filter_number", help_text="Any spelling of an international number."
    )
    number_prefix = django_filters.CharFilter(
        method="filter_number_prefix", help_text="Leading digits, punctuation ignored."
    )
    unassigned = django_filters.BooleanFilter(field_name="trunk", lookup_expr="isnull")

    class Meta:
        model = PhoneNumber
        fields = ["customer", "trunk", "status", "number", "number_prefix", "unassigned"]

    def filter_number(self, queryset: Any, name: str, value: str) -> Any:
        return queryset.filter(number=_as_e164_digits(value))

    def filter_number_prefix(self, queryset: Any, name: str, value: str) -> Any:
        return queryset.filter(number__startswith=_as_e164_digits(value))


class CarrierFilterSet(django_filters.FilterSet):
    class Meta:
        model = Carrier
        fields = ["name", "enabled"]


class CarrierGatewayFilterSet(django_filters.FilterSet):
    class Meta:
        model = CarrierGateway
        fields = ["carrier", "transport", "enabled"]


class EdgeNodeFilterSet(django_filters.FilterSet):
    class Meta:
        model = EdgeNode
        fields = ["name", "enabled"]
