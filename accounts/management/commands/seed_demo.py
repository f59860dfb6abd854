"""Seed a demo: a staff user, a customer with a trunk, numbers, a carrier and an API key.

Idempotent: a second run changes nothing and prints no secrets (they were shown once, on the
first run). ``--reset-secrets`` issues a new staff password, API key and SIP password.
"""

import secrets
from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction

from accounts import services as account_services
from accounts.choices import BillingMode, Role
from accounts.models import ApiKey, Customer, User
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


class Command(BaseCommand):
    help = "Create the demo data set (idempotent). Secrets are printed only when issued."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--reset-secrets", action="store_true", help="Issue new secrets.")

    @transaction.atomic
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
        IpAclEntry.objects.get_or_create(
            trunk=trunk, cidr="127.0.0.1/32", defaults={"description": "local PBX"}
        )
        OriginationUri.objects.get_or_create(
            trunk=trunk, uri="sip:127.0.0.1:5090", defaults={"priority": 10}
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

        carrier, _ = Carrier.objects.get_or_create(name="Demo Carrier")
        # Not the PBX's 127.0.0.1: an address is a carrier's or a trunk's, never both.
        CarrierGateway.objects.get_or_create(
            carrier=carrier, host="127.0.0.2", port=5080, transport="udp"
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
        if issued:
            self.stdout.write(self.style.WARNING("Secrets, shown once — copy them now:"))
            for line in issued:
                self.stdout.write(f"  {line}")
        else:
            self.stdout.write(
                "Secrets were shown when first issued; run with --reset-secrets for new ones."
            )
