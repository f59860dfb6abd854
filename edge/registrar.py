"""Registrations of trunks that REGISTER: where each trunk's PBX can be reached right now.

In memory, on this edge: a trunk's contacts expire unless refreshed, and expired ones are
dropped lazily when read and by `purge`, which the b2bua runs every `PURGE_INTERVAL` seconds
while anything is registered. When a new config is applied, the b2bua `retain`s only the trunks
that may still register (`edge.policy.admit_register`): a trunk deleted, suspended or no
longer allowed to register loses its contacts at once. Contacts are identified by their URI
text as registered. The caller authenticates the REGISTER, checks
`edge.policy.admit_register`, and answers 423 (with `Min-Expires: MIN_EXPIRES`) when
`granted_expires` says the interval is too brief.

No I/O and no clock: time is the `now` argument (monotonic seconds).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "DEFAULT_EXPIRES",
    "MAX_CONTACTS_PER_TRUNK",
    "MAX_EXPIRES",
    "MIN_EXPIRES",
    "PURGE_INTERVAL",
    "Contact",
    "Registrar",
    "granted_expires",
]

MIN_EXPIRES = 60  # below: 423 Interval Too Brief, Min-Expires: 60 (RFC 3261 10.3)
MAX_EXPIRES = 3600  # longer requests are granted this
DEFAULT_EXPIRES = 3600  # no Expires header nor contact parameter
MAX_CONTACTS_PER_TRUNK = 10  # a further contact pushes out the least recently refreshed
PURGE_INTERVAL = 60.0  # seconds between sweeps of expired contacts (bounds memory, not truth)


def granted_expires(requested: int | None) -> int | None:
    """The expiry to grant for a requested one (None: not given), or None when too brief.

    0 stays 0 (it removes the contact).
    """
    if requested is None:
        return DEFAULT_EXPIRES
    if requested == 0:
        return 0
    if requested < MIN_EXPIRES:
        return None
    return min(requested, MAX_EXPIRES)


@dataclass(frozen=True, slots=True)
class Contact:
    """A live registration: send the trunk's calls to `source` over `transport`, to `uri`."""

    trunk_id: int
    uri: str
    expires_at: float
    source: tuple[str, int]  # address the REGISTER came from (the PBX may sit behind NAT)
    transport: str
    registered_at: float

    def expires_in(self, now: float) -> int:
        """Whole seconds left, for the Contact `expires` parameter of the 200 OK."""
        return max(0, int(self.expires_at - now))


class Registrar:
    __slots__ = ("_by_trunk",)

    def __init__(self) -> None:
        # trunk id -> {uri: contact}, least recently refreshed first (dicts keep order).
        self._by_trunk: dict[int, dict[str, Contact]] = {}

    def register(
        self,
        trunk_id: int,
        contact_uri: str,
        expires: int,
        now: float,
        *,
        source: tuple[str, int],
        transport: str = "udp",
    ) -> Contact | None:
        """Add or refresh a contact for `expires` seconds (capped at MAX_EXPIRES); 0 removes it.

        Returns the stored contact, or None when it was removed. An `expires` below
        MIN_EXPIRES is the caller's to refuse with 423 first; passing one is a bug.
        """
        if expires == 0:
            self.remove(trunk_id, contact_uri)
            return None
        if expires < MIN_EXPIRES:
            raise ValueError(f"expires {expires} < MIN_EXPIRES: answer 423 Interval Too Brief")
        contacts = self._by_trunk.setdefault(trunk_id, {})
        contacts.pop(contact_uri, None)  # a refresh moves it to the most recent end
        contact = Contact(
            trunk_id, contact_uri, now + min(expires, MAX_EXPIRES), source, transport, now
        )
        contacts[contact_uri] = contact
        while len(contacts) > MAX_CONTACTS_PER_TRUNK:
            del contacts[next(iter(contacts))]
        return contact

    def contacts(self, trunk_id: int, now: float) -> list[Contact]:
        """The trunk's live contacts, most recently registered first."""
        contacts = self._by_trunk.get(trunk_id)
        if not contacts:
            return []
        live = [contact for contact in contacts.values() if contact.expires_at > now]
        if len(live) != len(contacts):
            if live:
                self._by_trunk[trunk_id] = {contact.uri: contact for contact in live}
            else:
                del self._by_trunk[trunk_id]
        live.reverse()
        return live

    def remove(self, trunk_id: int, uri: str) -> bool:
        """Forget one contact; whether it was there."""
        contacts = self._by_trunk.get(trunk_id)
        if contacts is None or contacts.pop(uri, None) is None:
            return False
        if not contacts:
            del self._by_trunk[trunk_id]
        return True

    def remove_trunk(self, trunk_id: int) -> int:
        """Forget every contact of a trunk (deleted, suspended, no longer allowed to register)."""
        return len(self._by_trunk.pop(trunk_id, {}))

    def retain(self, may_register: Callable[[int], bool]) -> int:
        """Forget the contacts of every trunk `may_register` refuses; how many were dropped."""
        dropped = 0
        for trunk_id in [t for t in self._by_trunk if not may_register(t)]:
            dropped += self.remove_trunk(trunk_id)
        return dropped

    def purge(self, now: float) -> int:
        """Drop every expired contact; how many were dropped."""
        dropped = 0
        for trunk_id in list(self._by_trunk):
            before = len(self._by_trunk[trunk_id])
            dropped += before - len(self.contacts(trunk_id, now))
        return dropped

    def __len__(self) -> int:
        return sum(len(contacts) for contacts in self._by_trunk.values())
