"""List endpoints of the REST API against PostgreSQL, as a ratio to the raw query of the same page.

With 100,000 numbers and 10,000 trunks (10 bench customers x 1,000 trunks, 10,000 numbers each),
pages of ``/api/v1/numbers/`` and ``/api/v1/trunks/`` are fetched through a real uvicorn server
over one keep-alive loopback connection, N sequential requests per case. Printed per case:

- p50 / p95 of the whole request (send, Django + DRF, PostgreSQL, JSON, receive);
- the database queries one request makes, counted in-process for page sizes 50 and 500 (they
  must be equal: a list never queries per row);
- the p50 of the same page fetched raw with psycopg on one connection (the paginator's
  ``COUNT(*)`` plus the ``SELECT ... LIMIT/OFFSET``), and the API p50 as a ratio to it.

The last line is ``api_list_overhead_ratio=<x>``: API p50 / raw p50 for the customer key's
numbers page of 50.

Usage (the database is created, migrated and filled if needed; the fill is skipped next time):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/trunkline_bench \
        .venv/bin/python bench/api_list.py [--requests N]
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/trunkline_bench"
SECRET_KEY = "bench-api-list-not-a-secret"
HOST = "127.0.0.1"

CUSTOMERS = 10
TRUNKS_PER_CUSTOMER = 1_000
NUMBERS = 100_000
CUSTOMER_PREFIX = "bench-api-list-"
KEY_NAME = "bench-api-list"
# Numbers +1555 0000000 .. +1555 0099999: one block, unique, E.164.
NUMBER_BASE = 15_550_000_000


def configure_environment(database_url: str) -> dict[str, str]:
    """The environment of this process and of the server: production-like, no .env needed."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url,
        DEBUG="0",
        SECRET_KEY=SECRET_KEY,
        ALLOWED_HOSTS=HOST,
        LOG_LEVEL="WARNING",
        DJANGO_SETTINGS_MODULE="config.settings",
    )
    # The per-caller rate limit stays on (its cost is part of a request) but never trips.
    env.setdefault("API_THROTTLE_RATE", "1000000/s")
    os.environ.update(env)
    return env


def libpq_url(database_url: str, dbname: str | None = None) -> str:
    """``DATABASE_URL`` without Django-only query options, optionally for another database."""
    parts = urlsplit(database_url)
    scheme = "postgresql" if parts.scheme in ("postgres", "postgresql", "pgsql") else parts.scheme
    path = f"/{dbname}" if dbname is not None else parts.path
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def ensure_database(database_url: str) -> None:
    import psycopg

    name = urlsplit(database_url).path.lstrip("/")
    with psycopg.connect(libpq_url(database_url, "postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
            print(f"# created database {name}")


def migrate(env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", "--verbosity", "0"],
        cwd=REPO,
        env=env,
        check=True,
    )


def fill(database_url: str, refill: bool = False) -> list[int]:
    """The bench customers' ids, filling their trunks and numbers first if they are not all there.

    Rows go in with COPY (a few seconds for all of them); a partial fill is removed and redone.
    """
    import psycopg

    from accounts.models import Customer

    names = [f"{CUSTOMER_PREFIX}{i:02d}" for i in range(CUSTOMERS)]
    with psycopg.connect(libpq_url(database_url)) as conn:
        ids = [
            row[0]
            for row in conn.execute(
                "SELECT id FROM accounts_customer WHERE name = ANY(%s) ORDER BY name", [names]
            )
        ]
        if len(ids) == CUSTOMERS and not refill:
            trunks, numbers = conn.execute(
                "SELECT (SELECT count(*) FROM trunking_trunk WHERE customer_id = ANY(%(c)s)),"
                " (SELECT count(*) FROM trunking_phonenumber WHERE customer_id = ANY(%(c)s))",
                {"c": ids},
            ).fetchone()
            if trunks == CUSTOMERS * TRUNKS_PER_CUSTOMER and numbers == NUMBERS:
                print(f"# data present: {trunks} trunks, {numbers} numbers; fill skipped")
                return ids
        started = time.perf_counter()
        now = dt.datetime.now(dt.UTC)
        with conn.transaction():
            if ids:
                conn.execute("DELETE FROM trunking_phonenumber WHERE customer_id = ANY(%s)", [ids])
                conn.execute("DELETE FROM trunking_trunk WHERE customer_id = ANY(%s)", [ids])
            conn.execute(
                "DELETE FROM trunking_phonenumber WHERE number >= %s AND number < %s",
                [f"+{NUMBER_BASE}", f"+{NUMBER_BASE + NUMBERS}"],
            )
            existing = {
                row[0]
                for row in conn.execute(
                    "SELECT name FROM accounts_customer WHERE name = ANY(%s)", [names]
                )
            }
            with conn.cursor().copy(
                "COPY accounts_customer (name, status, billing_mode, credit_limit, currency,"
                " created_at, updated_at) FROM STDIN"
            ) as copy:
                for name in names:
                    if name not in existing:
                        copy.write_row((name, "active", "postpaid", "0", "USD", now, now))
            ids = [
                row[0]
                for row in conn.execute(
                    "SELECT id FROM accounts_customer WHERE name = ANY(%s) ORDER BY name", [names]
                )
            ]
            with conn.cursor().copy(
                "COPY trunking_trunk (customer_id, name, status, max_channels, max_cps,"
                " allowed_destinations, blocked_prefixes, caller_id_policy, failover_stop_codes,"
                " registration_allowed, default_country, max_call_duration, created_at,"
                " updated_at) FROM STDIN"
            ) as copy:
                for customer_id in ids:
                    for t in range(TRUNKS_PER_CUSTOMER):
                        copy.write_row(
                            (
                                customer_id,
                                f"trunk-{t:04d}",
                                "active",
                                30,
                                10,
                                '["+1", "GB"]',
                                '["+1900"]',
                                "customer_numbers",
                                "[404, 486, 600, 603]",
                                False,
                                "US",
                                14400,
                                now,
                                now,
                            )
                        )
            trunks_of: dict[int, list[int]] = {customer_id: [] for customer_id in ids}
            for trunk_id, customer_id in conn.execute(
                "SELECT id, customer_id FROM trunking_trunk WHERE customer_id = ANY(%s)"
                " ORDER BY id",
                [ids],
            ):
                trunks_of[customer_id].append(trunk_id)
            with conn.cursor().copy(
                "COPY trunking_phonenumber (number, customer_id, trunk_id, status, monthly_price,"
                " description, created_at, updated_at) FROM STDIN"
            ) as copy:
                for i in range(NUMBERS):
                    customer_id = ids[i % CUSTOMERS]
                    trunk_ids = trunks_of[customer_id]
                    nth = i // CUSTOMERS  # this number's position within its customer
                    # Every tenth number is unassigned, as a real inventory has some.
                    trunk_id = None if nth % 10 == 9 else trunk_ids[nth % len(trunk_ids)]
                    copy.write_row(
                        (
                            f"+{NUMBER_BASE + i}",
                            customer_id,
                            trunk_id,
                            "active",
                            "1.0000",
                            f"bench DID {i}",
                            now,
                            now,
                        )
                    )
        conn.commit()
        # Steady state, as autovacuum would leave it: statistics for the planner, and the
        # visibility map that lets COUNT(*) be an index-only scan (fresh rows would hit the heap).
        conn.autocommit = True
        for table in ("accounts_customer", "trunking_trunk", "trunking_phonenumber"):
            conn.execute(f"VACUUM (ANALYZE) {table}")
        print(
            f"# filled {CUSTOMERS} customers, {CUSTOMERS * TRUNKS_PER_CUSTOMER} trunks,"
            f" {NUMBERS} numbers in {time.perf_counter() - started:.1f} s (COPY)"
        )
    assert Customer.objects.filter(pk__in=ids).count() == CUSTOMERS
    return ids


def issue_keys(customer_id: int) -> tuple[str, str]:
    """(customer key, operator key), fresh each run; earlier bench keys are deleted."""
    from accounts.models import ApiKey, Customer
    from accounts.services import api_key_create
    from core.tenancy import SYSTEM

    ApiKey.objects.filter(name=KEY_NAME).delete()
    customer = Customer.objects.get(pk=customer_id)
    customer_key = api_key_create(actor=SYSTEM, customer=customer, name=KEY_NAME).secret
    staff_key = api_key_create(actor=SYSTEM, customer=None, name=KEY_NAME).secret
    return customer_key, staff_key


@dataclass(frozen=True)
class Case:
    endpoint: str  # "numbers" or "trunks"
    who: str  # "customer" or "staff"
    page_size: int


def count_queries(case: Case, key: str) -> int:
    """Queries of one request, counted in-process on the same database (after a warm-up)."""
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client(HTTP_HOST=HOST, HTTP_AUTHORIZATION=f"Api-Key {key}")
    url = f"/api/v1/{case.endpoint}/?page=2&page_size={case.page_size}"
    # The first use of a key writes last_used_at (once a minute at most); not a per-list cost.
    assert client.get(url).status_code == 200
    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
    assert response.status_code == 200, response.content[:300]
    assert len(response.json()["results"]) == case.page_size
    return len(captured.captured_queries)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def start_server(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "config.asgi:application",
            "--host",
            HOST,
            "--port",
            str(port),
            "--no-access-log",
            "--lifespan",
            "off",
            "--log-level",
            "warning",
        ],
        cwd=REPO,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"uvicorn exited with {server.returncode}")
            try:
                conn = http.client.HTTPConnection(HOST, port, timeout=2)
                conn.request("GET", "/healthz")
                healthy = conn.getresponse().status == 200
                conn.close()
                if healthy:
                    return server
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("uvicorn did not answer /healthz within 30 s")
    except BaseException:
        stop_server(server)
        raise


def stop_server(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def page_numbers(total: int, page_size: int, count: int) -> list[int]:
    """The pages to fetch, cycling through every page of the list (deep offsets included)."""
    pages = max(1, -(-total // page_size))
    return [1 + i % pages for i in range(count)]


def timed(
    api: Callable[[int], None],
    raw: Callable[[int], None],
    pages: list[int],
    warmup: int,
    budget_s: float,
) -> tuple[list[float], list[float]]:
    """(API samples, raw samples), taken alternately page by page, so that a change of load on
    the machine during the case weighs on both sides alike."""
    for page in pages[:warmup]:
        api(page)
        raw(page)
    samples: tuple[list[float], list[float]] = ([], [])
    deadline = time.monotonic() + budget_s
    for page in pages:
        for run, into in ((api, samples[0]), (raw, samples[1])):
            started = time.perf_counter()
            run(page)
            into.append(time.perf_counter() - started)
        if time.monotonic() > deadline:
            break
    return samples


def api_runner(conn: http.client.HTTPConnection, case: Case, key: str) -> Callable[[int], None]:
    headers = {"Authorization": f"Api-Key {key}", "Accept": "application/json"}

    def run(page: int) -> None:
        conn.request(
            "GET",
            f"/api/v1/{case.endpoint}/?page={page}&page_size={case.page_size}",
            headers=headers,
        )
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"{case}: HTTP {response.status}: {body[:300]!r}")
        if page == 1 and len(json.loads(body)["results"]) != case.page_size:
            raise RuntimeError(f"{case}: short first page")

    return run


def raw_runner(pg: Any, case: Case, customer_id: int) -> Callable[[int], None]:
    """The same page with psycopg: the paginator's COUNT(*) and the page SELECT, both included
    (the API runs both on every request). Same columns as the ORM selects, same filter, same
    order. Not included: the API key lookup, which the API also runs (it counts as overhead)."""
    from accounts.models import Customer
    from trunking.models import PhoneNumber, Trunk

    def columns(model: type, alias: str) -> str:
        return ", ".join(f'{alias}."{f.column}"' for f in model._meta.concrete_fields)

    where = "WHERE t.customer_id = %(customer)s" if case.who == "customer" else ""
    if case.endpoint == "numbers":
        select = (
            f"SELECT {columns(PhoneNumber, 't')} FROM trunking_phonenumber t {where}"
            " ORDER BY t.number LIMIT %(limit)s OFFSET %(offset)s"
        )
        count = f"SELECT count(*) FROM trunking_phonenumber t {where}"
    else:
        # select_related("customer") and the ordering by customer name: the join is the API's.
        select = (
            f"SELECT {columns(Trunk, 't')}, {columns(Customer, 'c')}"
            " FROM trunking_trunk t JOIN accounts_customer c ON c.id = t.customer_id"
            f" {where} ORDER BY c.name, t.name LIMIT %(limit)s OFFSET %(offset)s"
        )
        count = f"SELECT count(*) FROM trunking_trunk t {where}"

    def run(page: int) -> None:
        params = {
            "customer": customer_id,
            "limit": case.page_size,
            "offset": (page - 1) * case.page_size,
        }
        with pg.cursor() as cur:
            cur.execute(count, params)
            cur.fetchone()
            cur.execute(select, params)
            if len(cur.fetchall()) != case.page_size and page == 1:
                raise RuntimeError(f"{case}: short raw page")

    return run


def quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per case (300)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed requests per case (20)")
    parser.add_argument(
        "--seconds",
        type=float,
        default=60.0,
        help="time budget per case; a case stops early past it (60)",
    )
    parser.add_argument("--refill", action="store_true", help="delete and refill the bench data")
    args = parser.parse_args()

    database_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    if not database_url.startswith(("postgres://", "postgresql://", "pgsql://")):
        print("DATABASE_URL must point at PostgreSQL", file=sys.stderr)
        return 2
    env = configure_environment(database_url)
    sys.path.insert(0, str(REPO))
    # Killed by `timeout` or a CI runner: unwind, so that the finally below stops the server.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    print("# bench/api_list.py: REST list endpoints vs the raw psycopg query of the same page")
    print("# API: uvicorn (1 process) on loopback, one keep-alive http.client connection,")
    print("#      sequential GETs walking the pages from the first (OFFSET grows, then wraps);")
    print("#      p50/p95 of the full round trip, after an untimed warm-up.")
    print("# raw: psycopg on one connection: COUNT(*) + SELECT same columns/filter/order/LIMIT")
    print("#      OFFSET for the same pages, same repetitions, alternating with the API requests.")
    print("#      ratio = API p50 / raw p50.")
    print("# queries: counted in-process (django.test.Client + CaptureQueriesContext) per request.")
    ensure_database(database_url)
    migrate(env)

    import django

    django.setup()
    import psycopg

    customer_ids = fill(database_url, refill=args.refill)
    bench_customer = customer_ids[0]
    customer_key, staff_key = issue_keys(bench_customer)
    keys = {"customer": customer_key, "staff": staff_key}
    totals = {
        ("numbers", "customer"): NUMBERS // CUSTOMERS,
        ("trunks", "customer"): TRUNKS_PER_CUSTOMER,
    }
    with psycopg.connect(libpq_url(database_url), autocommit=True) as pg:
        for endpoint, table in (("numbers", "trunking_phonenumber"), ("trunks", "trunking_trunk")):
            totals[(endpoint, "staff")] = pg.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    print(
        f"# data: {totals[('numbers', 'staff')]} numbers, {totals[('trunks', 'staff')]} trunks in"
        f" the database; customer key sees {totals[('numbers', 'customer')]} numbers,"
        f" {totals[('trunks', 'customer')]} trunks; {args.requests} requests per case"
    )

    queries: dict[tuple[str, str], dict[int, int]] = {}
    for endpoint in ("numbers", "trunks"):
        for who in ("customer", "staff"):
            queries[(endpoint, who)] = {
                size: count_queries(Case(endpoint, who, size), keys[who]) for size in (50, 500)
            }
    from django.db import connections

    connections.close_all()

    cases = [
        Case("numbers", "customer", 50),
        Case("numbers", "customer", 500),
        Case("trunks", "customer", 50),
        Case("trunks", "customer", 500),
        Case("numbers", "staff", 50),
        Case("trunks", "staff", 50),
    ]
    results: dict[Case, tuple[list[float], list[float]]] = {}
    port = free_port()
    server = start_server(env, port)
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        with psycopg.connect(libpq_url(database_url), autocommit=True) as pg:
            for case in cases:
                pages = page_numbers(
                    totals[(case.endpoint, case.who)], case.page_size, args.requests
                )
                results[case] = timed(
                    api_runner(conn, case, keys[case.who]),
                    raw_runner(pg, case, bench_customer),
                    pages,
                    args.warmup,
                    args.seconds,
                )
        conn.close()
    finally:
        stop_server(server)

    print()
    print(
        f"{'endpoint':<9}{'key':<10}{'size':>5}{'n':>6}{'p50 ms':>9}{'p95 ms':>9}"
        f"{'raw p50':>9}{'raw p95':>9}{'ratio':>7}{'queries':>9}"
    )
    ratios: dict[Case, float] = {}
    for case in cases:
        api, raw = results[case]
        ratios[case] = statistics.median(api) / statistics.median(raw)
        print(
            f"{case.endpoint:<9}{case.who:<10}{case.page_size:>5}{len(api):>6}"
            f"{ms(statistics.median(api)):>9}{ms(quantile(api, 0.95)):>9}"
            f"{ms(statistics.median(raw)):>9}{ms(quantile(raw, 0.95)):>9}"
            f"{ratios[case]:>7.2f}{queries[(case.endpoint, case.who)][case.page_size]:>9}"
        )
    print()
    constant = True
    for (endpoint, who), by_size in queries.items():
        same = by_size[50] == by_size[500]
        constant &= same
        print(
            f"queries per request, {endpoint} ({who} key): page_size=50 -> {by_size[50]},"
            f" page_size=500 -> {by_size[500]} ({'constant' if same else 'NOT CONSTANT'})"
        )
    print(f"api_list_overhead_ratio_staff={ratios[Case('numbers', 'staff', 50)]:.2f}")
    print(f"api_list_overhead_ratio_trunks={ratios[Case('trunks', 'customer', 50)]:.2f}")
    print(f"api_list_overhead_ratio={ratios[Case('numbers', 'customer', 50)]:.2f}")
    return 0 if constant else 1


if __name__ == "__main__":
    sys.exit(main())
