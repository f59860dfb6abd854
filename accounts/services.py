"""Writes of the accounts app that do more than save a row. Each audits in its transaction."""

from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from core.exceptions import InUse, describe_holders
from core.tenancy import Caller

from . import audit, keys
from .choices import AuditAction, CustomerStatus, Role
from .models import ApiKey, Customer, Membership, User


@dataclass(frozen=True)
class IssuedApiKey:
    """A new key and its secret, which exists only in this object and is never stored."""

    api_key: ApiKey
    secret: str


@transaction.atomic
def api_key_create(
    *, actor: Caller, customer: Customer | None, name: str, role: str = Role.ADMIN
) -> IssuedApiKey:
    """Issue a key for ``customer`` (None: an operator key with staff rights)."""
    secret, prefix, secret_hash = keys.generate_key()
    api_key = ApiKey(
        customer=customer,
        name=name,
        role=role,
        prefix=prefix,
        secret_hash=secret_hash,
        created_by=actor.user if actor.user is not None and actor.user.pk else None,
    )
    api_key.full_clean()
    api_key.save()
    audit.record(actor=actor, obj=api_key, action=AuditAction.CREATE)
    return IssuedApiKey(api_key=api_key, secret=secret)


@transaction.atomic
def api_key_revoke(*, actor: Caller, api_key: ApiKey) -> ApiKey:
    if api_key.revoked_at is None:
        before = audit.snapshot(api_key)
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
        audit.record(actor=actor, obj=api_key, action=AuditAction.REVOKE, before=before)
    return api_key


@transaction.atomic
def customer_suspend(*, actor: Caller, customer: Customer, reason: str = "") -> Customer:
    """Suspend a customer: the edge refuses all of its calls until it is resumed."""
    return audit.set_status(
        actor=actor,
        obj=customer,
        status=CustomerStatus.SUSPENDED,
        action=AuditAction.SUSPEND,
        reason=reason,
    )


@transaction.atomic
def customer_resume(*, actor: Caller, customer: Customer, reason: str = "") -> Customer:
    return audit.set_status(
        actor=actor,
        obj=customer,
        status=CustomerStatus.ACTIVE,
        action=AuditAction.RESUME,
        reason=reason,
    )


@transaction.atomic
def customer_delete(*, actor: Caller, customer: Customer, force: bool = False) -> None:
    """Delete a customer. One that still has trunks, numbers or members is refused (InUse, a
    409 naming them) unless ``force`` (staff): then its numbers, trunks (with everything under
    them), API keys and memberships go first. Every object removed is audited."""
    from trunking.models import PhoneNumber, Trunk
    from trunking.services import trunk_delete

    holders = [
        *PhoneNumber.objects.filter(customer=customer),
        *Trunk.objects.filter(customer=customer),
        *Membership.objects.filter(customer=customer),
    ]
    if holders and not force:
        held_by = describe_holders(holders)
        raise InUse(
            f"Customer '{customer}' still has {', '.join(held_by)}: delete them first, "
            "or delete with ?force=true (staff).",
            held_by,
        )
    for holder in holders:
        if isinstance(holder, Trunk):
            trunk_delete(actor=actor, trunk=holder, force=True)
        else:
            audit.delete(actor=actor, obj=holder, note=f"customer {customer} deleted")
    audit.delete(actor=actor, obj=customer, note="forced" if force else "")


@transaction.atomic
def member_create(
    *,
    actor: Caller,
    customer: Customer,
    username: str,
    email: str,
    role: str,
    password: str | None = None,
) -> User:
    """A person in ``customer``. Without a password they cannot log in until one is set."""
    user = User(username=username, email=email)
    if password:
        user.set_password(password)
    else:
        user.set_unusable_password()
    user.full_clean()
    user.save()
    membership = Membership(user=user, customer=customer, role=role)
    membership.full_clean()
    membership.save()
    audit.record(actor=actor, obj=user, action=AuditAction.CREATE, note=f"role={role}")
    return user


@transaction.atomic
def member_update(*, actor: Caller, user: User, role: str | None = None, **fields: object) -> User:
    """Change a member's profile fields, password or role."""
    before = audit.snapshot(user)
    password = fields.pop("password", None)
    for name, value in fields.items():
        setattr(user, name, value)
    if password:
        user.set_password(str(password))
    user.full_clean()
    user.save()
    note = "password changed" if password else ""
    if role is not None and user.membership.role != role:
        note = f"role {user.membership.role} -> {role}; {note}".strip("; ")
        user.membership.role = role
        user.membership.save(update_fields=["role"])
    audit.record(actor=actor, obj=user, action=AuditAction.UPDATE, before=before, note=note)
    return user
