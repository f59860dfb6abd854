"""Registrations with a fake clock: expiry, refresh, removal, limits."""

from __future__ import annotations

import pytest

from edge.registrar import (
    DEFAULT_EXPIRES,
    MAX_CONTACTS_PER_TRUNK,
    MAX_EXPIRES,
    MIN_EXPIRES,
    Contact,
    Registrar,
    granted_expires,
)

T0 = 500.0
SRC = ("203.0.113.7", 5060)
URI = "sip:pbx@192.168.1.10:5060"


def test_constants() -> None:
    assert (MIN_EXPIRES, MAX_EXPIRES, DEFAULT_EXPIRES) == (60, 3600, 3600)


@pytest.mark.parametrize(
    "requested, granted",
    [(None, DEFAULT_EXPIRES), (0, 0), (1, None), (59, None), (60, 60), (600, 600), (7200, 3600)],
)
def test_granted_expires(requested: int | None, granted: int | None) -> None:
    assert granted_expires(requested) == granted


def test_register_then_expire() -> None:
    registrar = Registrar()
    contact = registrar.register(7, URI, 120, T0, source=SRC)
    assert contact == Contact(7, URI, T0 + 120, SRC, "udp", T0)
    assert registrar.contacts(7, T0 + 119.9) == [contact]
    assert contact is not None and contact.expires_in(T0 + 100) == 20
    assert registrar.contacts(7, T0 + 120) == []
    assert len(registrar) == 0  # purged on read
    assert registrar.contacts(8, T0) == []


def test_expires_is_capped() -> None:
    registrar = Registrar()
    contact = registrar.register(7, URI, 86400, T0, source=SRC)
    assert contact is not None and contact.expires_at == T0 + MAX_EXPIRES


def test_too_brief_is_the_callers_to_refuse() -> None:
    with pytest.raises(ValueError, match="423"):
        Registrar().register(7, URI, MIN_EXPIRES - 1, T0, source=SRC)


def test_refresh_extends_and_moves_to_front() -> None:
    registrar = Registrar()
    registrar.register(7, URI, 60, T0, source=SRC)
    registrar.register(7, "sip:pbx@192.168.1.11", 60, T0 + 1, source=SRC)
    registrar.register(7, URI, 60, T0 + 30, source=("203.0.113.9", 5070), transport="tcp")
    contacts = registrar.contacts(7, T0 + 61.5)  # the second one has expired
    assert contacts == [Contact(7, URI, T0 + 90, ("203.0.113.9", 5070), "tcp", T0 + 30)]


def test_most_recent_first() -> None:
    registrar = Registrar()
    for index in range(3):
        registrar.register(7, f"sip:pbx{index}@10.0.0.1", 600, T0 + index, source=SRC)
    registrar.register(7, "sip:pbx0@10.0.0.1", 600, T0 + 10, source=SRC)
    assert [c.uri for c in registrar.contacts(7, T0 + 20)] == [
        "sip:pbx0@10.0.0.1",
        "sip:pbx2@10.0.0.1",
        "sip:pbx1@10.0.0.1",
    ]


def test_expires_zero_removes() -> None:
    registrar = Registrar()
    registrar.register(7, URI, 600, T0, source=SRC)
    assert registrar.register(7, URI, 0, T0 + 1, source=SRC) is None
    assert registrar.contacts(7, T0 + 1) == []
    assert registrar.register(7, URI, 0, T0 + 1, source=SRC) is None  # unknown: harmless


def test_remove() -> None:
    registrar = Registrar()
    registrar.register(7, URI, 600, T0, source=SRC)
    registrar.register(7, "sip:other@10.0.0.2", 600, T0, source=SRC)
    assert registrar.remove(7, URI)
    assert not registrar.remove(7, URI)
    assert not registrar.remove(8, URI)
    assert [c.uri for c in registrar.contacts(7, T0)] == ["sip:other@10.0.0.2"]


def test_trunks_are_separate_and_removable_whole() -> None:
    registrar = Registrar()
    registrar.register(7, URI, 600, T0, source=SRC)
    registrar.register(8, URI, 600, T0, source=SRC)
    assert registrar.remove_trunk(7) == 1
    assert registrar.remove_trunk(7) == 0
    assert registrar.contacts(7, T0) == []
    assert len(registrar.contacts(8, T0)) == 1


def test_contacts_per_trunk_are_capped_oldest_out() -> None:
    registrar = Registrar()
    for index in range(MAX_CONTACTS_PER_TRUNK + 2):
        registrar.register(7, f"sip:pbx{index}@10.0.0.1", 600, T0 + index, source=SRC)
    uris = [c.uri for c in registrar.contacts(7, T0 + 100)]
    assert len(uris) == MAX_CONTACTS_PER_TRUNK
    assert "sip:pbx0@10.0.0.1" not in uris and "sip:pbx1@10.0.0.1" not in uris
    assert uris[0] == f"sip:pbx{MAX_CONTACTS_PER_TRUNK + 1}@10.0.0.1"


def test_purge_drops_expired_everywhere() -> None:
    registrar = Registrar()
    registrar.register(7, URI, 60, T0, source=SRC)
    registrar.register(7, "sip:long@10.0.0.1", 600, T0, source=SRC)
    registrar.register(8, URI, 60, T0, source=SRC)
    assert registrar.purge(T0 + 61) == 2
    assert len(registrar) == 1
    assert registrar.purge(T0 + 61) == 0


def test_retain_keeps_only_the_trunks_that_may_register() -> None:
    registrar = Registrar()
    for trunk_id in (1, 2, 3):
        registrar.register(trunk_id, URI, 120, T0, source=SRC)
    registrar.register(2, URI + ";x", 120, T0, source=SRC)
    assert registrar.retain(lambda trunk_id: trunk_id == 1) == 3
    assert [len(registrar.contacts(t, T0)) for t in (1, 2, 3)] == [1, 0, 0]
    assert registrar.retain(lambda trunk_id: True) == 0 and len(registrar) == 1
