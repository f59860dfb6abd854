"""Writes of the trunking app that do more than save a row. Each audits in its transaction."""

import secrets
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction

from accounts import audit
from accounts.choices import AuditAction
from accounts.models import AuditEntry, Customer
from core.exceptions import InUse
from core.tenancy import Caller
from edge.sip.digest import ha1

from . import validators
from .choices import NumberStatus, TrunkStatus
from .models import EdgeNode, PhoneNumber, SipCredential, Trunk
from .push import EdgePushError, _request, request_config_push
from .tokens import edge_node_token

GENERATED_PASSWORD_BYTES = 18


# --- trunks -------------------------------------------------------------------------------


@transaction.atomic
def trunk_suspend(*, actor: Caller, trunk: Trunk, reason: str = "") -> Trunk:
    """Suspend a trunk: the edge refuses its new calls; calls in progress finish."""
    return audit.set_status(
        actor=actor,
        obj=trunk,
        status=TrunkStatus.SUSPENDED,
        action=AuditAction.SUSPEND,
        reason=reason,
    )


@transaction.atomic
def trunk_resume(*, actor: Caller, trunk: Trunk, reason: str = "") -> Trunk:
    return audit.set_status(
        actor=actor,
        obj=trunk,
        status=TrunkStatus.ACTIVE,
        action=AuditAction.RESUME,
        reason=reason,
    )


@transaction.atomic
def trunk_delete(*, actor: Caller, trunk: Trunk, force: bool = False) -> None:
    """Delete a trunk with its ACL entries, credentials and origination URIs (each audited).

    A trunk that still routes numbers is refused (InUse, a 409) unless ``force``: then its
    numbers stay with the customer, unassigned, and each unassignment is audited.
    """
    count = trunk.numbers.count()
    if count and not force:
        held_by = [f"{count} phone number{'s' if count != 1 else ''}"]
        raise InUse(
            f"Trunk '{trunk.name}' still routes {held_by[0]}: release or reassign them "
            "(POST /api/v1/numbers/release/) first, or delete with ?force=true (staff).",
            held_by,
        )
    audit.delete(actor=actor, obj=trunk, note="forced" if force else "")


# --- credentials ----------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedCredential:
    """A credential and its password, which exists only in this object and is never stored."""

    credential: SipCredential
    password: str


def _set_password(credential: SipCredential, password: str) -> None:
    credential.ha1_md5 = ha1(credential.username, credential.realm, password, "MD5")
    credential.ha1_sha256 = ha1(credential.username, credential.realm, password, "SHA-256")


@transaction.atomic
def credential_create(
    *,
    actor: Caller,
    trunk: Trunk,
    username: str,
    password: str | None = None,
    realm: str | None = None,
) -> IssuedCredential:
    """A digest credential for ``trunk``; the password is generated unless given."""
    password = password or secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)
    credential = SipCredential(trunk=trunk, username=username, realm=realm or settings.SIP_REALM)
    _set_password(credential, password)
    credential.full_clean()
    credential.save()
    audit.record(actor=actor, obj=credential, action=AuditAction.CREATE)
    return IssuedCredential(credential=credential, password=password)


@transaction.atomic
def credential_set_password(
    *, actor: Caller, credential: SipCredential, password: str | None = None
) -> IssuedCredential:
    """Replace the password (generated unless given); the old one stops working."""
    password = password or secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)
    _set_password(credential, password)
    credential.save(update_fields=["ha1_md5", "ha1_sha256"])
    audit.record(actor=actor, obj=credential, action=AuditAction.UPDATE, note="password changed")
    return IssuedCredential(credential=credential, password=password)


# --- numbers --------------------------------------------------------------------------------


def normalize_number(text: str, *, trunk: Trunk | None, customer: Customer | None) -> str:
    """A number as a user wrote it, in E.164: a national number is read in the trunk's default
    country, else the customer's (ValidationError in the user's words otherwise)."""
    region = trunk.default_country if trunk is not None else None
    if not region and customer is not None:
        region = customer.default_country or None
    return validators.normalize_e164(text, region)


class NumberImportError(Exception):
    """Rows that failed validation: ``errors`` is a list of {index, field, message}."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} invalid row(s)")
        self.errors = errors


NUMBER_IMPORT_FIELDS = frozenset({"number", "trunk", "monthly_price", "status", "description"})


def _number_from_row(
    row: Mapping[str, Any], *, customer: Customer, trunks: Mapping[int, Trunk]
) -> tuple[PhoneNumber, list[tuple[str, str]]]:
    """A validated unsaved number and the (field, message) problems of the row."""
    problems: list[tuple[str, str]] = [
        (name, "Unknown field.") for name in sorted(set(row) - NUMBER_IMPORT_FIELDS)
    ]
    number = PhoneNumber(customer=customer)
    trunk_id = row.get("trunk")
    if trunk_id not in (None, ""):
        trunk = trunks.get(trunk_id) if isinstance(trunk_id, int) else None
        if trunk is None:
            problems.append(("trunk", f"No trunk {trunk_id!r} for this customer."))
        number.trunk = trunk
    try:
        number.number = normalize_number(
            str(row.get("number", "")), trunk=number.trunk, customer=customer
        )
    except ValidationError as exc:
        problems.append(("number", exc.messages[0]))
    try:
        number.monthly_price = Decimal(str(row.get("monthly_price", "0")))
        if number.monthly_price < 0 or not number.monthly_price.is_finite():
            raise InvalidOperation
    except InvalidOperation:
        problems.append(("monthly_price", "Give a non-negative decimal amount."))
    status = row.get("status", NumberStatus.ACTIVE)
    if status not in NumberStatus.values:
        problems.append(("status", f"Choose one of {', '.join(NumberStatus.values)}."))
    number.status = status
    number.description = str(row.get("description", ""))[:200]
    return number, problems


@transaction.atomic
def numbers_import(
    *, actor: Caller, customer: Customer, rows: Iterable[Mapping[str, Any]]
) -> list[PhoneNumber]:
    """Create every number in ``rows`` or none: all rows are checked before anything is written.

    Raises NumberImportError listing each bad row by its index and field.
    """
    rows = list(rows)
    trunks = {t.pk: t for t in Trunk.objects.filter(customer=customer)}
    numbers: list[PhoneNumber] = []
    errors: list[dict[str, Any]] = []
    first_seen: dict[str, int] = {}
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            errors.append({"index": index, "field": None, "message": "Each row must be an object."})
            continue
        number, problems = _number_from_row(row, customer=customer, trunks=trunks)
        if number.number and number.number in first_seen:
            problems.append(("number", f"Duplicate of row {first_seen[number.number]}."))
        elif number.number:
            first_seen[number.number] = index
        errors.extend({"index": index, "field": f, "message": m} for f, m in problems)
        numbers.append(number)
    taken = set(
        PhoneNumber.objects.filter(number__in=list(first_seen)).values_list("number", flat=True)
    )
    errors.extend(
        {"index": first_seen[n], "field": "number", "message": f"{n} already exists."}
        for n in sorted(taken)
    )
    if errors:
        raise NumberImportError(sorted(errors, key=lambda e: (e["index"], e["field"] or "")))
    created = PhoneNumber.objects.bulk_create(numbers)
    request_config_push(keys=["numbers"])  # bulk_create sends no signals
    AuditEntry.objects.bulk_create(
        audit.build(actor=actor, obj=number, action=AuditAction.IMPORT) for number in created
    )
    return created


def _numbers_by_spelling(
    texts: Iterable[Any], *, customer: Customer | None, trunk: Trunk | None
) -> list[PhoneNumber]:
    """The numbers the user listed (any spelling), locked; all of them, or NumberImportError
    naming each one that is unreadable, unknown (to ``customer``, when given) or repeated."""
    errors: list[dict[str, Any]] = []
    wanted: dict[str, int] = {}
    for index, text in enumerate(texts):
        try:
            number = normalize_number(str(text), trunk=trunk, customer=customer)
        except ValidationError as exc:
            errors.append({"index": index, "field": "numbers", "message": exc.messages[0]})
            continue
        if number in wanted:
            message = f"{number} is listed twice (row {wanted[number]})."
            errors.append({"index": index, "field": "numbers", "message": message})
        wanted.setdefault(number, index)
    found = PhoneNumber.objects.select_for_update().filter(number__in=list(wanted))
    if customer is not None:
        found = found.filter(customer=customer)
    by_number = {n.number: n for n in found}
    errors.extend(
        {"index": index, "field": "numbers", "message": f"No number {number} here."}
        for number, index in wanted.items()
        if number not in by_number
    )
    if errors:
        raise NumberImportError(sorted(errors, key=lambda e: e["index"]))
    return [by_number[n] for n in wanted]


def _set_trunk(*, actor: Caller, numbers: list[PhoneNumber], trunk: Trunk | None) -> None:
    for number in numbers:
        previous = number.trunk
        if number.trunk_id == (trunk.pk if trunk is not None else None):
            continue
        before = audit.snapshot(number)
        number.trunk = trunk
        number.save(update_fields=["trunk", "updated_at"])
        note = (
            f"assigned to trunk {trunk.name}"
            if trunk is not None
            else f"released from trunk {previous.name if previous else ''}"
        )
        audit.record(actor=actor, obj=number, action=AuditAction.UPDATE, before=before, note=note)


@transaction.atomic
def numbers_assign(*, actor: Caller, trunk: Trunk, numbers: Iterable[Any]) -> list[PhoneNumber]:
    """Route every listed number (the trunk's customer's, any spelling) to ``trunk``, or none:
    NumberImportError names each bad entry. Each change is audited."""
    found = _numbers_by_spelling(numbers, customer=trunk.customer, trunk=trunk)
    _set_trunk(actor=actor, numbers=found, trunk=trunk)
    return found


@transaction.atomic
def numbers_release(
    *, actor: Caller, customer: Customer | None, numbers: Iterable[Any]
) -> list[PhoneNumber]:
    """Unassign every listed number from its trunk (it stays the customer's), or none.
    ``customer`` None: any customer's numbers (staff)."""
    found = _numbers_by_spelling(numbers, customer=customer, trunk=None)
    _set_trunk(actor=actor, numbers=found, trunk=None)
    return found


# --- edge nodes -----------------------------------------------------------------------------


@transaction.atomic
def edge_node_rotate_token(*, actor: Caller, node: EdgeNode) -> str:
    """Invalidate the node's token and return its new one (shown once)."""
    before = audit.snapshot(node)
    node.token_generation += 1
    node.save(update_fields=["token_generation", "updated_at"])
    audit.record(
        actor=actor, obj=node, action=AuditAction.UPDATE, before=before, note="token rotated"
    )
    return edge_node_token(node)


# --- calls in progress --------------------------------------------------------------------


class CallNotFound(Exception):
    """No edge carries that call (or the caller may not see it)."""


class EdgeUnavailable(Exception):
    """The edge carrying the call did not carry out the hang-up."""


HANGUP_TIMEOUT = 5.0


def edge_call_end(*, node: EdgeNode, call_id: str, reason: str = "operator_hangup") -> bool:
    """Ask ``node``'s control API to end ``call_id`` (``DELETE /calls/{id}?reason=``; the
    reasons are `edge.calls.HANGUP_REASONS`, written on the CDR); False if the edge no longer
    carries the call. EdgeUnavailable if it did not answer or refused."""
    path = f"/calls/{urllib.parse.quote(call_id, safe='')}?reason={urllib.parse.quote(reason)}"
    try:
        _request(node, "DELETE", path, None, HANGUP_TIMEOUT)
    except EdgePushError as exc:
        if exc.status == 404:
            return False
        raise EdgeUnavailable(str(exc)) from exc
    return True


@transaction.atomic
def call_hangup(*, actor: Caller, call_id: str) -> dict[str, Any]:
    """End a call in progress through its edge's control API (``DELETE /calls/{id}``).

    The call is looked up on the edges as ``actor`` sees them (another tenant's call is
    CallNotFound, like a missing one). The audit row names the call, its edge and its trunk.
    """
    from .selectors import find_active_call

    found = find_active_call(caller=actor, call_id=call_id)
    if found is None:
        raise CallNotFound(call_id)
    node, call = found
    if not edge_call_end(node=node, call_id=call_id):  # it ended meanwhile
        raise CallNotFound(call_id)
    trunk = Trunk.objects.filter(pk=call["trunk_id"]).first()
    audit.record(
        actor=actor,
        obj=trunk or node,
        action=AuditAction.HANGUP,
        note=f"call {call_id} on edge {node.name} ({call['caller']} -> {call['callee']})",
    )
    return call
