"""Call history fixtures: a few calls of two customers around one day, and callers of every role.

The day is 2026-11-29 (UTC). ``calls`` holds, for Acme (``customer``) on trunk ``pbx-1``: an
answered outbound call, a busy inbound one and a CPS refusal; for Globex one answered call; and
one call of Acme ten days earlier, outside the period the tests ask for.
"""

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from rest_framework.test import APIClient

from accounts import services as account_services
from accounts.choices import Role
from billing.models import Cdr
from billing.services import cdrs_ingest
from core.tenancy import SYSTEM
from edge.cdr import iso_utc
from edge.tests.test_cdr import SETUP, make_cdr, refused_cdr

DAY = "since=2026-11-29T00:00:00Z&until=2026-11-30T00:00:00Z"
# Every kind of caller of the call history: the access matrix's five plus the billing role.
READERS = ("owner", "read_only", "billing")


@dataclass
class Calls:
    answered: Cdr
    busy: Cdr
    refused: Cdr
    theirs: Cdr
    old: Cdr

    @property
    def mine_in_day(self) -> set[int]:
        return {self.answered.pk, self.busy.pk, self.refused.pk}


@pytest.fixture
def calls(customer, trunk, other_customer, other_trunk) -> Calls:
    records = {
        "answered": make_cdr(customer_id=customer.pk, trunk_id=trunk.pk),
        "busy": make_cdr(
            customer_id=customer.pk,
            trunk_id=trunk.pk,
            direction="inbound",
            caller_e164="+33142685300",
            callee_e164="+14155550100",
            setup_at=iso_utc(SETUP + 60),
            ringing_at=iso_utc(SETUP + 61),
            answer_at=None,
            end_at=iso_utc(SETUP + 70),
            duration_ms=0,
            billable_seconds=0,
            answered_by=None,
            routes=[
                {
                    "target": "sip:pbx.acme.test",
                    "kind": "origination_uri",
                    "status": 486,
                    "reason": "busy",
                },
            ],
            final_code=486,
            reason="busy",
            hangup_side="callee",
        ),
        "refused": refused_cdr(
            customer_id=customer.pk,
            trunk_id=trunk.pk,
            direction="outbound",
            caller_e164="+14155550199",
            callee_e164="+442079460001",
            setup_at=iso_utc(SETUP + 120),
            end_at=iso_utc(SETUP + 120),
            final_code=503,
            reason="cps_limit",
        ),
        "theirs": make_cdr(
            customer_id=other_customer.pk,
            trunk_id=other_trunk.pk,
            setup_at=iso_utc(SETUP + 30),
            duration_ms=30_000,
            billable_seconds=30,
        ),
        "old": make_cdr(
            customer_id=customer.pk, trunk_id=trunk.pk, setup_at=iso_utc(SETUP - 864_000)
        ),
    }
    assert cdrs_ingest(records=records.values()) == len(records)
    return Calls(**{name: Cdr.objects.get(call_id=r.call_id) for name, r in records.items()})


@pytest.fixture
def reader_as(api_as, customer) -> Callable[[str], APIClient]:
    """``api_as`` plus a ``billing`` caller (a billing-role key of the owner's customer)."""

    def make(who: str) -> APIClient:
        if who != "billing":
            return api_as(who)
        issued = account_services.api_key_create(
            actor=SYSTEM, customer=customer, name="billing", role=Role.BILLING
        )
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Api-Key {issued.secret}")
        return client

    return make


@pytest.fixture
def job_env(settings, tmp_path):
    """Jobs run in-process (as in the embedded default) and write under a temporary directory."""
    from billing.tasks import run_cdr_export

    settings.CDR_EXPORT_DIR = tmp_path / "exports"
    conf = run_cdr_export.app.conf
    eager = conf.task_always_eager
    conf.task_always_eager = True
    yield settings.CDR_EXPORT_DIR
    conf.task_always_eager = eager
