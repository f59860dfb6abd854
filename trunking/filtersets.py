"""FilterSets of the trunking app, shared by the API and list pages."""

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


class PhoneNumberFilterSet(django_filters.FilterSet):
    number_prefix = django_filters.CharFilter(field_name="number", lookup_expr="startswith")
    unassigned = django_filters.BooleanFilter(field_name="trunk", lookup_expr="isnull")

    class Meta:
        model = PhoneNumber
        fields = ["customer", "trunk", "status", "number", "number_prefix", "unassigned"]


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
