"""List filtering: refuses what it does not understand, and offers only the caller's objects.

A list's query may hold only its FilterSet's filters, ``ordering``, ``search``, ``page``,
``page_size`` and ``format``; anything else (a misspelt filter, ``?channel_limit=``) is a 400
naming it, as is an ``ordering`` by a field that is not orderable, and an integer beyond what
the column holds (SQLite would fail on it; PostgreSQL would quietly match nothing).

A filter on a relation (``?customer=7``, ``?trunk=12``) validates its value against a queryset
of choices. Unscoped, another tenant's id is a valid choice (200, empty page) while a missing id
is not (400), which tells a customer which ids exist. Here every such queryset is cut down to
the caller's tenant, once for all filtersets (staff: unchanged), so another tenant's id answers
exactly like a missing one.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.backends.base.operations import BaseDatabaseOperations
from django_filters import BooleanFilter
from django_filters.filters import QuerySetRequestMixin
from django_filters.rest_framework import DjangoFilterBackend
from rest_framework import serializers
from rest_framework.filters import OrderingFilter

from .tenancy import Caller, get_caller

ALWAYS_ALLOWED = frozenset({"page", "page_size", "format"})
BOOLEAN_WORDS = frozenset({"true", "false", "1", "0"})

# Integer ranges by field type, the same on every database (SQLite stores any 64-bit value).
INTEGER_RANGES: dict[str, tuple[int, int]] = {
    **BaseDatabaseOperations.integer_field_ranges,
    "AutoField": BaseDatabaseOperations.integer_field_ranges["IntegerField"],
    "BigAutoField": BaseDatabaseOperations.integer_field_ranges["BigIntegerField"],
    "SmallAutoField": BaseDatabaseOperations.integer_field_ranges["SmallIntegerField"],
}


def integer_range(field: models.Field) -> tuple[int, int] | None:
    """The values ``field`` (an integer column, or a foreign key to one) can hold."""
    if isinstance(field, models.ForeignKey):
        field = field.target_field
    return INTEGER_RANGES.get(field.get_internal_type())


def _model_field(model: Any, path: str) -> models.Field | None:
    field = None
    for part in path.split("__"):
        try:
            field = model._meta.get_field(part)
        except Exception:  # a lookup or a non-field name: no bound to check
            return None
        model = getattr(field, "related_model", None) or model
    return field if isinstance(field, models.Field) else None


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


class FilterBackend(DjangoFilterBackend):
    """DjangoFilterBackend whose 400 quotes each field's messages as Django renders them.

    django-filter's own translation applies ``%`` formatting to every message, so a message
    that echoes the caller's value (``'5%' is not a SIP final code``) raised a TypeError: a 500.
    """

    def filter_queryset(self, request: Any, queryset: Any, view: Any) -> Any:
        filterset = self.get_filterset(request, queryset, view)
        if filterset is None:
            return queryset
        if not filterset.is_valid():
            raise serializers.ValidationError(
                {
                    name: [error["message"] for error in errors]
                    for name, errors in filterset.errors.get_json_data().items()
                }
            )
        return filterset.qs


class StrictFilterBackend(FilterBackend):
    """django-filter for every API list: unknown parameters and out-of-range integers are 400s,
    and relation filters offer only the caller's objects."""

    def get_filterset(self, request: Any, queryset: Any, view: Any) -> Any:
        filterset = super().get_filterset(request, queryset, view)
        if filterset is not None:
            # Before the form exists: it takes its choices from the filters when built.
            scope_filter_choices(filterset, get_caller(request))
        return filterset

    def filter_queryset(self, request: Any, queryset: Any, view: Any) -> Any:
        if getattr(view, "action", None) == "list":
            self._check_query(request, queryset, view)
        return super().filter_queryset(request, queryset, view)

    def _check_query(self, request: Any, queryset: Any, view: Any) -> None:
        filterset_class = self.get_filterset_class(view, queryset)
        filters = filterset_class.base_filters if filterset_class is not None else {}
        allowed = set(ALWAYS_ALLOWED) | set(filters)
        if getattr(view, "ordering_fields", None) is not None:
            allowed.add(OrderingFilter.ordering_param)
        if getattr(view, "search_fields", None):
            allowed.add("search")
        allowed |= set(getattr(view, "extra_query_params", ()))
        errors: dict[str, list[str]] = {}
        for name in sorted(set(request.query_params) - allowed):
            errors[name] = [f"Unknown query parameter; use one of {', '.join(sorted(allowed))}."]
        for name, flt in filters.items():
            raw = request.query_params.get(name)
            if raw is None:
                continue
            if isinstance(flt, BooleanFilter):  # its form field reads "maybe" as "no filter"
                if raw.lower() not in BOOLEAN_WORDS:
                    errors[name] = ["Give true or false."]
                continue
            field = _model_field(queryset.model, flt.field_name)
            bounds = integer_range(field) if field is not None else None
            if bounds is None:
                continue
            try:
                value = int(raw)
            except ValueError:
                continue  # the filter's own form field reports it
            if not bounds[0] <= value <= bounds[1]:
                errors[name] = [f"Give a whole number from {bounds[0]} to {bounds[1]}."]
        if errors:
            raise serializers.ValidationError(errors)


class StrictOrderingFilter(OrderingFilter):
    def get_ordering(self, request: Any, queryset: Any, view: Any) -> Any:
        params = request.query_params.get(self.ordering_param)
        if params:
            context = {"request": request}
            valid = {name for name, _label in self.get_valid_fields(queryset, view, context)}
            wrong = [p.strip() for p in params.split(",") if p.strip().lstrip("-") not in valid]
            if wrong:
                raise serializers.ValidationError(
                    {
                        self.ordering_param: [
                            f"Cannot order by {', '.join(wrong)}; "
                            f"choose from {', '.join(sorted(valid))} (prefix - to reverse)."
                        ]
                    }
                )
        return super().get_ordering(request, queryset, view)
