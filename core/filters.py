"""The filter backend of every API list: django-filter, with choices scoped to the caller.

A filter on a relation (``?customer=7``, ``?trunk=12``) validates its value against a queryset
of choices. Unscoped, another tenant's id is a valid choice (200, empty page) while a missing id
is not (400), which tells a customer which ids exist. Here every such queryset is cut down to
the caller's tenant, once for all filtersets (staff: unchanged), so another tenant's id answers
exactly like a missing one.
"""

from typing import Any

from django_filters.filters import QuerySetRequestMixin
from django_filters.rest_framework import DjangoFilterBackend

from .tenancy import Caller, get_caller


def scope_filter_choices(filterset: Any, caller: Caller | None) -> None:
    """Restrict the choices of every relation filter of ``filterset`` to ``caller``'s tenant.

    Models without a tenant (carriers, ...) offer no choices to customers."""
    for filter_ in filterset.filters.values():
        if not isinstance(filter_, QuerySetRequestMixin):
            continue
        queryset = filter_.get_queryset(filterset.request)
        if caller is None:
            filter_.queryset = queryset.none()
        elif caller.is_staff:
            continue
        elif hasattr(queryset.model, "tenant_lookup"):
            # distinct(): a tenant reached through a to-many relation (a deck's assignments)
            # must not make a choice appear twice.
            filter_.queryset = caller.scope(queryset).distinct()
        else:
            filter_.queryset = queryset.none()


class TenantScopedFilterBackend(DjangoFilterBackend):
    """DjangoFilterBackend whose relation filters offer only the caller's objects."""

    def get_filterset(self, request: Any, queryset: Any, view: Any) -> Any:
        filterset = super().get_filterset(request, queryset, view)
        if filterset is not None:
            # Before the form exists: it takes its choices from the filters when built.
            scope_filter_choices(filterset, get_caller(request))
        return filterset
