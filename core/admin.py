"""Admin base: every save and delete through the admin writes its audit row in the same
transaction (Django's admin already wraps each change view in one)."""

from typing import Any

from django.contrib import admin
from django.db import models, transaction
from django.http import HttpRequest

from accounts import audit
from accounts.choices import AuditAction

from .tenancy import SYSTEM, Caller, caller_for_user


def admin_caller(request: HttpRequest) -> Caller:
    return caller_for_user(request.user) or SYSTEM  # type: ignore[arg-type]


class AuditedModelAdmin(admin.ModelAdmin):
    def save_model(self, request: HttpRequest, obj: models.Model, form: Any, change: bool) -> None:
        with transaction.atomic():
            before = audit.snapshot(type(obj).objects.get(pk=obj.pk)) if change else None
            super().save_model(request, obj, form, change)
            audit.record(
                actor=admin_caller(request),
                obj=obj,
                action=AuditAction.UPDATE if change else AuditAction.CREATE,
                before=before,
            )

    def delete_model(self, request: HttpRequest, obj: models.Model) -> None:
        # Audits what the delete cascades to and the foreign keys it clears, like the API.
        with transaction.atomic():
            audit.delete(actor=admin_caller(request), obj=obj)

    def delete_queryset(self, request: HttpRequest, queryset: models.QuerySet[Any]) -> None:
        with transaction.atomic():
            for obj in queryset:
                self.delete_model(request, obj)

    def save_formset(self, request: HttpRequest, form: Any, formset: Any, change: bool) -> None:
        """Inline rows (ACL entries, URIs, ...) are audited like top-level objects."""
        with transaction.atomic():
            caller = admin_caller(request)
            befores = {
                f.instance.pk: audit.snapshot(type(f.instance).objects.get(pk=f.instance.pk))
                for f in formset.forms
                if f.instance.pk and f.has_changed()
            }
            instances = formset.save(commit=False)
            for obj in formset.deleted_objects:
                audit.delete(actor=caller, obj=obj)
            for obj in instances:
                is_new = obj.pk is None
                obj.save()
                audit.record(
                    actor=caller,
                    obj=obj,
                    action=AuditAction.CREATE if is_new else AuditAction.UPDATE,
                    before=befores.get(obj.pk),
                )
            formset.save_m2m()
