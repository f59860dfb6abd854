"""The base of every API viewset: scopes by tenant and audits every write (NetBox's shape).

A concrete viewset names its queryset, serializer and filterset; nothing tenant-related is
repeated per view. Writes with side effects beyond the row itself override ``perform_*`` to call
their service.
"""

from typing import Any

from django.db import models, transaction
from rest_framework import viewsets
from rest_framework.exceptions import PermissionDenied, ValidationError

from accounts import audit
from accounts.choices import AuditAction

from .tenancy import Caller, get_caller


class TenantScopedViewSet(viewsets.ModelViewSet):
    """A model viewset whose queryset holds only the caller's tenant's objects.

    Another tenant's id therefore answers 404, exactly like an id that does not exist.
    """

    staff_only = False
    http_method_names = ["get", "post", "put", "patch", "delete", "head", "options"]

    @property
    def caller(self) -> Caller:
        caller = get_caller(self.request)
        assert caller is not None, "TenantPermission admits only known callers"
        return caller

    def get_queryset(self) -> models.QuerySet[Any]:
        return self.caller.scope(super().get_queryset())

    def after_write(self, instance: models.Model) -> None:
        """Called inside the write's transaction; subclasses schedule side effects here."""

    def perform_create(self, serializer: Any) -> None:
        with transaction.atomic():
            instance = serializer.save()
            audit.record(actor=self.caller, obj=instance, action=AuditAction.CREATE)
            self.after_write(instance)

    def perform_update(self, serializer: Any) -> None:
        with transaction.atomic():
            before = audit.snapshot(serializer.instance)
            instance = serializer.save()
            audit.record(actor=self.caller, obj=instance, action=AuditAction.UPDATE, before=before)
            self.after_write(instance)

    def perform_destroy(self, instance: models.Model) -> None:
        with transaction.atomic():
            audit.delete(actor=self.caller, obj=instance)  # and what it cascades to
            self.after_write(instance)

    def force_requested(self) -> bool:
        """``?force=true`` on a DELETE: staff only (403 for others)."""
        value = self.request.query_params.get("force", "false").lower()
        if value not in ("true", "false", "1", "0"):
            raise ValidationError({"force": ["Give true or false."]})
        force = value in ("true", "1")
        if force and not self.caller.is_staff:
            raise PermissionDenied("Only operators may force a delete.")
        return force


class TenantScopedReadOnlyViewSet(viewsets.ReadOnlyModelViewSet):
    """Read-only twin of :class:`TenantScopedViewSet` (audit log, reference data)."""

    staff_only = False

    def get_queryset(self) -> models.QuerySet[Any]:
        caller = get_caller(self.request)
        assert caller is not None
        return caller.scope(super().get_queryset())
