"""Fixtures shared by every app's tests: two tenants, one caller of each kind, their objects.

A pytest plugin, loaded by the root conftest.py when pytest-django is active (the edge's tests
also run without Django: `pytest -p no:django edge`)."""

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from rest_framework.test import APIClient

from accounts import services as account_services
from accounts.choices import Role
from accounts.models import Customer, Membership, User
from core.tenancy import SYSTEM
from trunking import services as trunking_services
from trunking.models import (
    Carrier,
    CarrierGateway,
    EdgeNode,
    IpAclEntry,
    OriginationUri,
    PhoneNumber,
    Trunk,
)

# Every kind of caller the access matrix checks.
CALLERS = ("owner", "other_customer", "read_only", "staff", "anonymous")


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings) -> None:
    # The production hasher is slow on purpose; tests create many users.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _fresh_api_throttle() -> None:
    # The API's rate limit counts in the (in-process) cache: each test starts with a clean slate.
    from django.core.cache import cache

    cache.clear()


@pytest.fixture
def customer(db) -> Customer:
    return Customer.objects.create(name="Acme", credit_limit=Decimal("100"))


@pytest.fixture
def other_customer(db) -> Customer:
    return Customer.objects.create(name="Globex")


@pytest.fixture
def staff_user(db) -> User:
    return User.objects.create_user("operator", "ops@example.com", "pw-operator-1", is_staff=True)


@pytest.fixture
def member(customer) -> User:
    user = User.objects.create_user("alice", "alice@acme.test", "pw-alice-12345")
    Membership.objects.create(user=user, customer=customer, role=Role.OWNER)
    return user


@pytest.fixture
def api_as(customer, other_customer, staff_user) -> Callable[[str], APIClient]:
    """A client acting as one kind of caller: customers by API key, staff by browser session."""

    def make(who: str) -> APIClient:
        client = APIClient()
        if who == "staff":
            client.force_login(staff_user)
        elif who != "anonymous":
            tenant, role = {
                "owner": (customer, Role.ADMIN),
                "read_only": (customer, Role.READ_ONLY),
                "other_customer": (other_customer, Role.ADMIN),
            }[who]
            issued = account_services.api_key_create(
                actor=SYSTEM, customer=tenant, name=who, role=role
            )
            client.credentials(HTTP_AUTHORIZATION=f"Api-Key {issued.secret}")
        return client

    return make


@pytest.fixture
def trunk(customer) -> Trunk:
    return Trunk.objects.create(customer=customer, name="pbx-1")


@pytest.fixture
def other_trunk(other_customer) -> Trunk:
    return Trunk.objects.create(customer=other_customer, name="globex-pbx")


def _assigned_deck(customer: Customer, name: str) -> Any:
    from billing.models import RateAssignment, RateDeck

    deck = RateDeck.objects.create(name=name, currency=customer.currency)
    RateAssignment.objects.create(
        customer=customer, deck=deck, valid_from=datetime(2020, 1, 1, tzinfo=UTC)
    )
    return deck


@pytest.fixture
def rate_deck(customer) -> Any:
    """A rate deck assigned to the customer (customers read the decks that price them)."""
    return _assigned_deck(customer, "acme-rates")


@pytest.fixture
def other_rate_deck(other_customer) -> Any:
    return _assigned_deck(other_customer, "globex-rates")


@pytest.fixture
def acl_entry(trunk) -> IpAclEntry:
    return IpAclEntry.objects.create(trunk=trunk, cidr="192.0.2.0/24")


@pytest.fixture
def credential(trunk):
    return trunking_services.credential_create(actor=SYSTEM, trunk=trunk, username="acme-pbx")


@pytest.fixture
def origination_uri(trunk) -> OriginationUri:
    return OriginationUri.objects.create(trunk=trunk, uri="sip:pbx.acme.test:5060")


@pytest.fixture
def number(customer, trunk) -> PhoneNumber:
    return PhoneNumber.objects.create(number="+14155550100", customer=customer, trunk=trunk)


@pytest.fixture
def carrier(db) -> Carrier:
    return Carrier.objects.create(name="Carrier One")


@pytest.fixture
def gateway(carrier) -> CarrierGateway:
    return CarrierGateway.objects.create(carrier=carrier, host="198.51.100.7")


@pytest.fixture
def edge_node(db) -> EdgeNode:
    return EdgeNode.objects.create(name="edge-1", control_url="http://127.0.0.1:8081")
