"""FilterSets of the accounts app, shared by the API and list pages."""

import django_filters

from .models import ApiKey, AuditEntry, Customer, User


class CustomerFilterSet(django_filters.FilterSet):
    name = django_filters.CharFilter(lookup_expr="icontains")

    class Meta:
        model = Customer
        fields = ["name", "status", "billing_mode", "currency"]


class UserFilterSet(django_filters.FilterSet):
    customer = django_filters.NumberFilter(field_name="membership__customer")
    role = django_filters.CharFilter(field_name="membership__role")

    class Meta:
        model = User
        fields = ["username", "email", "is_active", "customer", "role"]


class ApiKeyFilterSet(django_filters.FilterSet):
    revoked = django_filters.BooleanFilter(
        field_name="revoked_at", lookup_expr="isnull", exclude=True
    )

    class Meta:
        model = ApiKey
        fields = ["customer", "role", "revoked"]


class AuditEntryFilterSet(django_filters.FilterSet):
    since = django_filters.IsoDateTimeFilter(field_name="time", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="time", lookup_expr="lt")
    object_type = django_filters.CharFilter(field_name="content_type__model")

    class Meta:
        model = AuditEntry
        fields = ["customer", "action", "object_type", "object_id", "request_id", "since", "until"]
