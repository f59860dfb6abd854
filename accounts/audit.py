"""The audit log's write side: capture an object's fields, diff, and record one row.

Called by services inside their transaction, so a change and its audit row commit together.
Fields a model lists in ``audit_exclude`` (hashes, tokens) never reach the log.
"""

from decimal import Decimal
from typing import Any, TypeVar

from django.contrib.contenttypes.models import ContentType
from django.db import models

from core.middleware import request_id_var
from core.tenancy import Caller

from .models import AuditEntry, Customer

FieldValues = dict[str, Any]


def _plain(value: Any) -> Any:
    """A JSON-safe form of a field value."""
    if isinstance(value, Decimal):
        return str(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, list | dict | str | int | float | bool) or value is None:
        return value
    return str(value)


def snapshot(obj: models.Model) -> FieldValues:
    """The audited field values of ``obj`` (foreign keys by id)."""
    excluded = getattr(obj, "audit_exclude", frozenset())
    values: FieldValues = {}
    for field in obj._meta.concrete_fields:
        if field.name in excluded or field.name in ("created_at", "updated_at"):
            continue
        values[field.name] = _plain(getattr(obj, field.attname))
    return values


def _customer_of(obj: models.Model) -> Customer | None:
    if isinstance(obj, Customer):
        return obj
    lookup = getattr(obj, "tenant_lookup", None)
    if not lookup:
        return None
    target: Any = obj
    for part in lookup.split("__"):
        target = getattr(target, part, None)
        if target is None:
            return None
    return target if isinstance(target, Customer) else None


def build(
    *,
    actor: Caller,
    obj: models.Model,
    action: str,
    before: FieldValues | None = None,
    note: str = "",
) -> AuditEntry | None:
    """The unsaved audit row for ``action`` on ``obj`` (for bulk writes); see :func:`record`."""
    after = {} if action == "delete" else snapshot(obj)
    before = before or {}
    changes = {
        name: [before.get(name), after.get(name)]
        for name in sorted(before.keys() | after.keys())
        if before.get(name) != after.get(name)
    }
    if action == "update" and not changes and not note:
        return None
    return AuditEntry(
        actor=actor.user if actor.user is not None and actor.user.pk else None,
        api_key=actor.api_key,
        customer=_customer_of(obj),
        content_type=ContentType.objects.get_for_model(obj, for_concrete_model=True),
        object_id=str(obj.pk if obj.pk is not None else before.get("id", "")),
        object_repr=str(obj)[:200],
        action=action,
        changes=changes,
        request_id=request_id_var.get(),
        note=note[:500],
    )


def record(
    *,
    actor: Caller,
    obj: models.Model,
    action: str,
    before: FieldValues | None = None,
    note: str = "",
) -> AuditEntry | None:
    """Write the audit row for ``action`` on ``obj``.

    ``before`` is the snapshot taken before an update or delete. An update that changed no
    audited field writes nothing and returns None.
    """
    entry = build(actor=actor, obj=obj, action=action, before=before, note=note)
    if entry is not None:
        entry.save()
    return entry


ModelT = TypeVar("ModelT", bound=models.Model)


def set_status(*, actor: Caller, obj: ModelT, status: str, action: str, reason: str) -> ModelT:
    """Move ``obj`` (a model with ``status`` and ``updated_at``) to ``status`` and audit it
    with ``action`` and ``reason``; nothing happens if it is already there. Call inside the
    service's transaction."""
    if obj.status != status:  # type: ignore[attr-defined]
        before = snapshot(obj)
        obj.status = status  # type: ignore[attr-defined]
        obj.save(update_fields=["status", "updated_at"])
        record(actor=actor, obj=obj, action=action, before=before, note=reason)
    return obj


def delete(*, actor: Caller, obj: models.Model, note: str = "") -> None:
    """Delete ``obj`` and audit everything the delete touches, in the caller's transaction.

    Django's own collector says what a delete reaches: each object it cascades to gets a
    ``delete`` row ("deleted with trunk X"), each foreign key it clears (``SET_NULL``: a number
    whose trunk goes) an ``update`` row. A ``PROTECT`` relation raises ProtectedError, which the
    API answers with a 409 naming the holders. The audit log's own rows are not audited.
    """
    from django.db import router
    from django.db.models.deletion import Collector

    collector = Collector(using=router.db_for_write(type(obj)))
    collector.collect([obj])
    cause = f"{obj._meta.verbose_name} {obj}"[:200]
    entries: list[AuditEntry | None] = []
    reached: list[models.Model] = [
        *(inst for instances in collector.data.values() for inst in instances),
        *(inst for qs in collector.fast_deletes for inst in qs),
    ]
    for inst in reached:
        if isinstance(inst, AuditEntry):
            continue
        entries.append(
            build(
                actor=actor,
                obj=inst,
                action="delete",
                before=snapshot(inst),
                note=note
                if inst is obj or (type(inst) is type(obj) and inst.pk == obj.pk)
                else f"deleted with {cause}",
            )
        )
    for (field, value), batches in collector.field_updates.items():
        if field.model is AuditEntry:
            continue
        for batch in batches:
            for inst in batch:
                before = snapshot(inst)
                setattr(inst, field.attname, value)
                entries.append(
                    build(
                        actor=actor,
                        obj=inst,
                        action="update",
                        before=before,
                        note=f"{field.verbose_name} cleared: {cause} deleted",
                    )
                )
    AuditEntry.objects.bulk_create([e for e in entries if e is not None])
    obj.delete()
