"""Prepaid billing end to end (issue 12 items 4 and 7), with real processes: the embedded
platform (`manage.py runplatform`: web app and SIP edge on one loop, SQLite, tasks and the
prepaid check in-process), SIPp as the customer's PBX (identified by its address, like the
demo trunk) and as the carrier.

A prepaid customer with a rate deck (United Kingdom: 0.01 connect, 1.20/min, 6/6) and a 0.50
top-up makes:

1. a short call (about 2 s): 6 s billed, 0.01 + 1.20 x 6 / 60 = 0.13; balance 0.37;
2. a long call that would never end by itself: its running cost 0.01 + 0.02 x (seconds so far
   rounded up to 6) reaches the 0.37 left once it passes 12 s, so the check (every second here)
   ends it with `no_credit` before 18 s: 18 s billed, 0.37; SIPp (both sides) gets the BYE;
   balance 0.00;
3. a third call, refused 402 (`no_credit`) once the push of the blocked customer reached the
   edge.

The month's invoice (through the API, as an operator) has one usage line, United Kingdom, 2
calls, 0.40 billed minutes, 0.5000, total 0.5000, amount due 0.50, equal to the ledger's usage.

Two topologies, the same test:

- ``embedded``: the embedded default, on its own SQLite database in a temporary directory
  (DATABASE_URL and REDIS_URL ignored on purpose): CDRs ingested in-process, the prepaid check
  run by runplatform's own loop;
- ``celery``: PostgreSQL (a database of the test's own beside DATABASE_URL's) and a Redis of
  the test's own (``redis-server --save ''``): runplatform starts a Celery worker with beat,
  CDRs go through the Redis stream and COPY, beat runs `billing.tasks.check_prepaid_calls`.
  It needs DATABASE_URL (PostgreSQL) and redis-server; where CI sets them it must not skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from billing.tests.cdr_harness import RedisServer
from edge.tests import sipp_harness as h

pytestmark = [pytest.mark.slow, pytest.mark.sipp]

CALLER, CALLEE = "+14155550100", "+442071234567"

SEED = """
import json
from datetime import UTC, datetime
from decimal import Decimal
from accounts.models import Customer
from accounts.services import api_key_create
from billing import services
from billing.models import LedgerEntry, RateDeck
from core.tenancy import SYSTEM
from trunking.models import Carrier, CarrierGateway, IpAclEntry, PhoneNumber, Trunk
acme = Customer.objects.create(name="Acme Prepaid", billing_mode="prepaid", currency="USD")
trunk = Trunk.objects.create(customer=acme, name="acme-pbx", max_channels=3, max_cps=5,
                             caller_id_policy="pass_through")
IpAclEntry.objects.create(trunk=trunk, cidr="{pbx}/32")
PhoneNumber.objects.create(number={caller!r}, customer=acme, trunk=trunk)
carrier = Carrier.objects.create(name="Carrier One")
CarrierGateway.objects.create(carrier=carrier, host="{carrier}", port={carrier_port})
deck = RateDeck.objects.create(name="Retail", currency="USD")
services.rate_deck_import(actor=SYSTEM, deck=deck, text=(
    "prefix,destination,rate_per_minute,connect_fee,first_block,increment,effective_from,"
    "effective_to\\n44,United Kingdom,1.2000,0.0100,6,6,2020-01-01,\\n"))
services.rate_assignment_create(actor=SYSTEM, customer=acme, deck=deck,
                                valid_from=datetime(2020, 1, 1, tzinfo=UTC))
services.ledger_post(actor=SYSTEM, customer=acme, kind=LedgerEntry.Kind.TOPUP,
                     amount=Decimal("0.50"), note="first top-up")
key = api_key_create(actor=SYSTEM, customer=None, name="operator")
print(json.dumps({{"customer": acme.pk, "key": key.secret}}))
"""


def _need_sipp() -> None:
    if h.sipp_binary() is not None:
        return
    if os.environ.get("CI"):
        pytest.fail("sipp is missing (.ci/run installs it)")
    pytest.skip("sipp is missing")


class Platform:
    def __init__(
        self, *, url: str, sip: tuple[str, int], key: str, database: Path | str, node: str
    ) -> None:
        self.node = node
        self.url = url
        self.sip = sip
        self.key = key
        self.database = database  # an SQLite file, or a PostgreSQL URL

    def api(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        request = urllib.request.Request(
            self.url + path,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers={"Authorization": f"Api-Key {self.key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            data = response.read()
            kind = response.headers.get("Content-Type", "")
        return json.loads(data) if kind.startswith("application/json") else data.decode()

    def balance(self, customer: int) -> Decimal:
        return Decimal(self.api("GET", f"/api/v1/balances/{customer}/")["balance"])

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """A read of the platform's database (SQLite: busy while it writes, so retried)."""
        if isinstance(self.database, str):
            with psycopg.connect(self.database, autocommit=True) as db:
                return db.execute(sql.replace("?", "%s"), args).fetchall()
        for _ in range(50):
            try:
                with contextlib.closing(sqlite3.connect(self.database, timeout=5)) as db:
                    return db.execute(sql, args).fetchall()
            except sqlite3.OperationalError:
                time.sleep(0.1)
        raise AssertionError(f"database busy: {sql}")

    def applied_version(self) -> int:
        sql = "SELECT applied_version FROM trunking_edgenode WHERE name = ?"
        (version,) = self.query(sql, self.node)[0]
        return int(version or 0)


def _wait(what: str, check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s")


@contextlib.contextmanager
def _embedded(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path | str]]:
    database = tmp_path / "prepaid.sqlite3"
    yield {"DATABASE_URL": f"sqlite:///{database}"}, database


@contextlib.contextmanager
def _celery(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path | str]]:
    """A PostgreSQL database of the test's own (beside DATABASE_URL's) and a Redis of its own."""
    base = os.environ.get("DATABASE_URL", "")
    if not base.startswith("postgres"):
        pytest.skip("needs DATABASE_URL (PostgreSQL)")
    if shutil.which("redis-server") is None:
        pytest.skip("needs redis-server")
    server, _, name = base.rpartition("/")
    name = f"{name.split('?')[0]}_prepaid_e2e"
    maintenance = f"{server}/postgres"  # DATABASE_URL's own database may not exist
    with psycopg.connect(maintenance, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    redis = RedisServer(tmp_path).start()
    url = f"{server}/{name}"
    try:
        yield {"DATABASE_URL": url, "REDIS_URL": redis.url, "CDR_CONSUME_INTERVAL": "0.5"}, url
    finally:
        redis.stop()
        with psycopg.connect(maintenance, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(
    params=["embedded", pytest.param("celery", marks=pytest.mark.needs("redis", "postgres"))]
)
def platform(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Platform, int, h.Sipp]]:
    _need_sipp()
    topology = _embedded if request.param == "embedded" else _celery
    with topology(tmp_path) as (services, database):
        yield from _platform(tmp_path, services, database)


def _platform(
    tmp_path: Path, services: dict[str, str], database: Path | str
) -> Iterator[tuple[Platform, int, h.Sipp]]:
    carrier = h.Sipp(
        tmp_path, "carrier", scenario_file=h.scenario("uas_basic.xml"), local_ip=h.CARRIER_IP,
        calls=None, recv_timeout_ms=90_000, wall_timeout=180,
    )  # fmt: skip
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "REDIS_URL", "CELERY_TASK_ALWAYS_EAGER")
    }
    env.update(
        services,
        TRUNKLINE_VAR_DIR=str(tmp_path / "var"),
        DEBUG="1",
        SECRET_KEY="e2e-prepaid-secret",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",
        PREPAID_CHECK_SECONDS="1",
    )
    manage = [sys.executable, str(h.REPO / "manage.py")]
    subprocess.run([*manage, "migrate", "-v", "0"], env=env, cwd=h.REPO, check=True, timeout=120)
    seed = SEED.format(
        pbx=h.PBX_IP, caller=CALLER, carrier=h.CARRIER_IP, carrier_port=carrier.local_port
    )
    seeded = subprocess.run(
        [*manage, "shell", "-c", seed], env=env, cwd=h.REPO, check=True, timeout=60,
        capture_output=True, text=True,
    )  # fmt: skip
    ids = json.loads(seeded.stdout.strip().splitlines()[-1])
    carrier.start().wait_listening()
    platform = h.start_platform(manage, env, tmp_path)
    # With Redis, Celery (and its beat) does the work the embedded loop does without it.
    assert (b"Celery worker (with beat) started" in platform.log_path.read_bytes()) is bool(
        services.get("REDIS_URL")
    )
    try:
        yield (
            Platform(
                url=platform.url,
                sip=(h.EDGE_IP, platform.sip_port),
                key=ids["key"],
                database=database,
                node=env["EDGE_NODE_NAME"],
            ),
            ids["customer"],
            carrier,
        )
    finally:
        platform.stop()
        carrier.stop(grace=2)


CDR_SQL = (
    "SELECT reason, final_code, hangup_side, answer_at IS NOT NULL, billed_seconds, cost, "
    "unrated_reason FROM billing_cdr ORDER BY setup_at"
)


def _row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    reason, code, side, answered, billed, cost, unrated = row
    return (reason, code, side, bool(answered), billed, Decimal(str(cost)), unrated)


def test_a_prepaid_customer_is_cut_at_zero_refused_402_and_invoiced(platform, tmp_path) -> None:
    site, customer, carrier = platform
    keys = {"caller": CALLER, "callee": CALLEE}
    assert site.balance(customer) == Decimal("0.5000")

    # 1. A short call: rated on ingest, debited.
    short = h.Sipp(
        tmp_path, "short", scenario_file=h.scenario("uac_basic.xml"), local_ip=h.PBX_IP,
        remote=site.sip, keys=keys, duration_ms=2000, wall_timeout=30,
    ).run()  # fmt: skip
    assert short.ok, short.explain()
    _wait("the short call debited", lambda: site.balance(customer) == Decimal("0.3700"))
    version_before = site.applied_version()

    # 2. A long call: only the prepaid check ends it (SIPp waits 90 s for a BYE).
    long = h.Sipp(
        tmp_path, "long", scenario_file=h.scenario("uac_wait_bye.xml"), local_ip=h.PBX_IP,
        remote=site.sip, keys=keys, recv_timeout_ms=90_000, wall_timeout=60,
    ).run()  # fmt: skip
    assert long.ok, long.explain()
    assert long.received("BYE"), "the caller got no BYE"
    _wait("the cut call debited", lambda: site.balance(customer) == Decimal("0.0000"))

    # 3. The customer is blocked on the edge (a push after the balance crossed zero): 402.
    _wait("the out-of-credit push applied", lambda: site.applied_version() > version_before)
    refused = h.Sipp(
        tmp_path, "refused", scenario_file=h.scenario("uac_expect_refusal.xml"),
        local_ip=h.PBX_IP, remote=site.sip, keys=keys, variables={"expected": "402"},
        wall_timeout=30,
    ).run()  # fmt: skip
    assert refused.ok, refused.explain()

    rows = _wait("three CDRs", lambda: len(r := site.query(CDR_SQL)) == 3 and r)
    (first, cut, blocked) = [_row(row) for row in rows]
    assert first == ("normal_clearing", 200, "caller", True, 6, Decimal("0.13"), "")
    assert cut == ("no_credit", 200, "edge", True, 18, Decimal("0.37"), "")
    assert blocked == ("no_credit", 402, "", False, 0, 0, "")
    # The carrier's side of the cut call got its BYE too.
    assert len(carrier.result().received("BYE")) == 2  # the short call's, the cut call's
    hangups = site.query("SELECT note FROM accounts_auditentry WHERE action = 'hangup'")
    assert len(hangups) == 1 and "no_credit" in hangups[0][0]

    # The month's invoice, built and issued through the API: hand-computed figures.
    (answered_at,) = site.query("SELECT MIN(answer_at) FROM billing_cdr")[0]
    period = str(answered_at)[:10]
    draft = site.api("POST", "/api/v1/invoices/", {"customer": customer, "period": period})
    assert Decimal(draft["total"]) == Decimal("0.50")
    (line,) = draft["lines"]
    assert line["kind"] == "usage" and line["description"] == "United Kingdom (+44)"
    assert (Decimal(line["quantity"]), Decimal(line["minutes"])) == (2, Decimal("0.40"))
    assert Decimal(line["amount"]) == Decimal("0.13") + Decimal("0.37")
    issued = site.api("POST", f"/api/v1/invoices/{draft['id']}/issue/")
    assert issued["status"] == "issued" and issued["number"] == 1
    document = site.api("GET", f"/api/v1/invoices/{draft['id']}/csv/")
    assert "amount due,,,,0.50" in document
