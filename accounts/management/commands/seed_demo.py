"""Seed a demo: a staff user, a customer with a trunk, numbers, a carrier and an API key.

Idempotent: a second run changes nothing and prints no secrets (they were shown once, on the
first run). ``--reset-secrets`` issues a new staff password, API key and SIP password.
"""

import secrets
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction

from accounts import services as account_services
from accounts.choices import BillingMode, Role
from accounts.models import ApiKey, Customer, User
from billing import services as billing_services
from billing.models import LedgerEntry, RateAssignment, RateDeck
from billing.rate_import import COLUMNS
from billing.selectors import customer_balance
from core.tenancy import SYSTEM
from trunking import services as trunking_services
from trunking.models import (
    Carrier,
    CarrierGateway,
    IpAclEntry,
    OriginationUri,
    PhoneNumber,
    SipCredential,
    Trunk,
)

DEMO_CUSTOMER = "Demo Telecom"
DEMO_NUMBERS = ["+14155550100", "+14155550101", "+14155550102", "+442079460000"]

# Loopback is all of 127.0.0.0/8: one address per role, so that the edge (127.0.0.1) tells the
# demo PBX's outbound calls from the demo carrier's inbound ones by source address, as it does
# in production. README "Place your first call" sends SIPp calls from these addresses.
DEMO_PBX_IP = "127.0.0.2"  # the demo trunk's ACL; its origination URI listens here too
DEMO_PBX_PORT = 5090  # where the edge sends the demo DIDs' inbound calls
DEMO_CARRIER_IP = "127.0.0.3"  # the demo carrier's gateway (and the source of inbound calls)
DEMO_CARRIER_PORT = 5080
# Addresses earlier versions seeded, which made the PBX's calls look like the carrier's.
_OLD_DEMO_IP = "127.0.0.1"
# The demo's prices (docs/billing.md): North America per 6 s, the UK per minute.
DEMO_DECK = "Demo retail (USD)"
DEMO_RATES = (
    ",".join(COLUMNS)
    + "\n"
    + "1,North America,0.0100,0,6,6,,\n44,United Kingdom,0.0200,0,60,60,,\n"
)
DEMO_RATES_FROM = datetime(2020, 1, 1, tzinfo=UTC)
DEMO_CREDIT = Decimal("10.00")


class Command(BaseCommand):
    help = "Create the demo data set (idempotent). Secrets are printed only when issued."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--reset-secrets", action="store_true", help="Issue new secrets.")

    @transaction.atomic
    def _billing(self, customer: Customer) -> None:
        """A rate deck for the demo's calls and some prepaid credit, once: the demo customer is
        prepaid, and at a zero balance its calls are refused (no_credit, 402)."""
        deck, created = RateDeck.objects.get_or_create(
            name=DEMO_DECK, defaults={"currency": customer.currency}
        )
        if created:
            billing_services.rate_deck_import(actor=SYSTEM, deck=deck, text=DEMO_RATES)
        if not RateAssignment.objects.filter(customer=customer, deck=deck).exists():
            billing_services.rate_assignment_create(
                actor=SYSTEM, customer=customer, deck=deck, valid_from=DEMO_RATES_FROM
            )
        billing_services.ledger_post(
            actor=SYSTEM,
            customer=customer,
            kind=LedgerEntry.Kind.TOPUP,
            amount=DEMO_CREDIT,
            note="demo credit",
            reference="seed-demo-credit",  # posted once, however often the seed runs
        )

    def handle(self, *args: Any, reset_secrets: bool = False, **options: Any) -> None:
        issued: list[str] = []

        admin, created = User.objects.get_or_create(
            username="admin",
            defaults={"is_staff": True, "is_superuser": True, "email": "ops@example.com"},
        )
        if created or reset_secrets:
            password = secrets.token_urlsafe(12)
            admin.set_password(password)
            admin.save()
            issued.append(f"staff login:  admin / {password}   (http://127.0.0.1:8000/admin/)")

        customer, _ = Customer.objects.get_or_create(
            name=DEMO_CUSTOMER,
            defaults={
                "billing_mode": BillingMode.PREPAID,
                "credit_limit": Decimal("0"),
                "currency": "USD",
            },
        )
        trunk, _ = Trunk.objects.get_or_create(
            customer=customer,
            name="demo-pbx",
            defaults={
                "max_channels": 20,
                "max_cps": 5,
                "allowed_destinations": ["+1", "GB"],
                "blocked_prefixes": ["+1900"],
            },
        )
        IpAclEntry.objects.filter(trunk=trunk, cidr=f"{_OLD_DEMO_IP}/32").delete()
        IpAclEntry.objects.get_or_create(
            trunk=trunk, cidr=f"{DEMO_PBX_IP}/32", defaults={"description": "demo PBX"}
        )
        OriginationUri.objects.filter(trunk=trunk, uri=f"sip:{_OLD_DEMO_IP}:5090").delete()
        OriginationUri.objects.get_or_create(
            trunk=trunk, uri=f"sip:{DEMO_PBX_IP}:{DEMO_PBX_PORT}", defaults={"priority": 10}
        )
        if reset_secrets:
            SipCredential.objects.filter(trunk=trunk, username="demo-pbx").delete()
        if not SipCredential.objects.filter(trunk=trunk, username="demo-pbx").exists():
            cred = trunking_services.credential_create(
                actor=SYSTEM, trunk=trunk, username="demo-pbx"
            )
            user, realm = cred.credential.username, cred.credential.realm
            issued.append(f"SIP digest:   {user} / {cred.password}  (realm {realm})")
        for number in DEMO_NUMBERS:
            PhoneNumber.objects.get_or_create(
                number=number,
                defaults={"customer": customer, "trunk": trunk, "monthly_price": Decimal("1.00")},
            )

        self._billing(customer)

        carrier, _ = Carrier.objects.get_or_create(name="Demo Carrier")
        CarrierGateway.objects.filter(carrier=carrier, host=_OLD_DEMO_IP).delete()
        CarrierGateway.objects.get_or_create(
            carrier=carrier, host=DEMO_CARRIER_IP, port=DEMO_CARRIER_PORT, transport="udp"
        )

        demo_keys = ApiKey.objects.filter(customer=customer, name="demo", revoked_at__isnull=True)
        if reset_secrets:
            for old_key in demo_keys:
                account_services.api_key_revoke(actor=SYSTEM, api_key=old_key)
        if not demo_keys.exists():
            key = account_services.api_key_create(
                actor=SYSTEM, customer=customer, name="demo", role=Role.ADMIN
            )
            issued.append(f"API key:      {key.secret}")

        self.stdout.write(
            self.style.SUCCESS(
                f"Demo data ready: customer '{customer}', trunk '{trunk.name}', "
                f"{len(DEMO_NUMBERS)} numbers, carrier '{carrier}'."
            )
        )
        self.stdout.write(
            f"Demo addresses (loopback): PBX {DEMO_PBX_IP} (trunk ACL; inbound calls to "
            f"sip:{DEMO_PBX_IP}:{DEMO_PBX_PORT}), carrier gateway "
            f"{DEMO_CARRIER_IP}:{DEMO_CARRIER_PORT}; demo DIDs {', '.join(DEMO_NUMBERS)}. "
            "README: 'Place your first call'."
        )
        self.stdout.write(
            f"Demo billing: prepaid, balance {customer_balance(customer.pk)} USD, calls rated "
            f"by the deck '{DEMO_DECK}' (docs/billing.md)."
        )
        if issued:
            self.stdout.write(self.style.WARNING("Secrets, shown once — copy them now:"))
            for line in issued:
                self.stdout.write(f"  {line}")
        else:
            self.stdout.write(
                "Secrets were shown when first issued; run with --reset-secrets for new ones."
            )
