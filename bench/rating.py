"""Rating in the CDR ingest path, against PostgreSQL.

A 50,000-prefix deck is imported (through `services.rate_deck_import`, as an operator would) and
assigned to one customer; a second customer has no deck. N synthetic answered CDRs (default
1,000,000) are made for each, then:

- rating alone: `RatingBook.rate` over the first customer's records (the lookup in the prefix
  table at answer time, billable seconds, the Decimal cost), in CDRs per second;
- ingest with rating: `services.cdrs_ingest` (COPY into a temporary table, INSERT ... ON
  CONFLICT, the ledger debit) of the first customer's records, in batches of 5,000;
- ingest without rating: the same for the second customer, whose calls find no deck (they are
  stored unrated: the rating work is skipped, everything else is the same);

and prints each as CDRs/s, the ratio ingest-with / ingest-without (the cost of rating, target
>= 0.8), and last `rating_cdrs_per_s=<x>` (target >= 200,000).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/trunkline_bench_rating \\
        .venv/bin/python bench/rating.py [--rows N]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/trunkline_bench_rating"
BATCH = 5_000
PREFIXES = 50_000


def setup_django(database_url: str) -> None:
    os.environ.update(
        DATABASE_URL=database_url,
        DEBUG="0",
        SECRET_KEY="bench-rating-not-a-secret",
        CELERY_TASK_ALWAYS_EAGER="1",
        DJANGO_SETTINGS_MODULE="config.settings",
        LOG_LEVEL="WARNING",
    )
    os.environ.pop("REDIS_URL", None)
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    if connection.vendor != "postgresql":
        raise SystemExit("bench/rating.py needs PostgreSQL (DATABASE_URL)")
    _create_database(database_url)
    call_command("migrate", verbosity=0)


def _create_database(database_url: str) -> None:
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


def deck_csv(rng: random.Random) -> str:
    """50,000 distinct prefixes of 2 to 7 digits under a few dozen country codes."""
    from billing.rate_import import COLUMNS

    countries = ["1", "44", "49", "33", "39", "34", "31", "61", "81", "86", "91", "55", "52", "7"]
    prefixes: set[str] = set(countries)
    while len(prefixes) < PREFIXES:
        country = rng.choice(countries)
        prefixes.add(country + str(rng.randrange(10, 10**5)))
    lines = [",".join(COLUMNS)]
    blocks = ["60,60", "60,6", "30,6", "6,6", "1,1"]
    for prefix in sorted(prefixes):
        rate = f"{rng.randrange(1, 50_000) / 100_000:.5f}"
        lines.append(f"{prefix},dest {prefix},{rate},0,{rng.choice(blocks)},2020-01-01,")
    return "\n".join(lines) + "\n"


def records(customer_id: int, count: int, rng: random.Random, edge: str) -> list:
    from edge.cdr import CallDetailRecord, iso_utc, new_call_id

    out = []
    base = datetime(2026, 11, 1, tzinfo=UTC).timestamp()
    countries = ["1", "44", "49", "33", "39", "34", "31", "61", "81", "86", "91"]
    for _ in range(count):
        setup = base + rng.random() * 20 * 86400
        duration = rng.randrange(1_000, 600_000)
        answer = setup + 3
        callee = "+" + rng.choice(countries) + str(rng.randrange(10**8, 10**9))
        out.append(
            CallDetailRecord(
                edge=edge, call_id=new_call_id(), a_call_id="a@pbx", b_call_id="b@edge",
                customer_id=customer_id, trunk_id=None, direction="outbound",
                caller_e164="+14155550100", callee_e164=callee, caller_raw="4155550100",
                callee_raw=callee, source_ip="192.0.2.10", source_port=5060, routes=[],
                answered_by="sip:198.51.100.8:5060", setup_at=iso_utc(setup),
                ringing_at=None, answer_at=iso_utc(answer),
                end_at=iso_utc(answer + duration / 1000), duration_ms=duration,
                billable_seconds=-(-duration // 1000), final_code=200,
                reason="normal_clearing", hangup_side="caller", codecs=[], config_version=1,
            )
        )  # fmt: skip
    return out


def ingest(batches: list[list]) -> float:
    from billing.services import cdrs_ingest

    started = time.perf_counter()
    for batch in batches:
        cdrs_ingest(records=batch)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument(
        "--database-url", default=os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    )
    args = parser.parse_args()
    setup_django(args.database_url)

    from accounts.models import Customer
    from billing import services
    from billing.models import Cdr, LedgerEntry, RateAssignment, RateDeck
    from billing.selectors import RatingBook
    from core.tenancy import SYSTEM
    from edge.cdr import parse_iso_utc

    rng = random.Random(7)
    Cdr.objects.filter(edge__startswith="bench-rating").delete()
    rated_customer, _ = Customer.objects.get_or_create(name="bench-rating-rated")
    plain_customer, _ = Customer.objects.get_or_create(name="bench-rating-unrated")
    LedgerEntry.objects.filter(customer__in=[rated_customer, plain_customer]).delete()
    RateAssignment.objects.filter(customer__in=[rated_customer, plain_customer]).delete()
    RateDeck.objects.filter(name="bench-rating").delete()
    deck = RateDeck.objects.create(name="bench-rating", currency="USD")
    text = deck_csv(rng)
    started = time.perf_counter()
    services.rate_deck_import(actor=SYSTEM, deck=deck, text=text)
    print(f"deck import: {PREFIXES:,} rows in {time.perf_counter() - started:.2f} s")
    services.rate_assignment_create(
        actor=SYSTEM, customer=rated_customer, deck=deck,
        valid_from=datetime(2020, 1, 1, tzinfo=UTC),
    )  # fmt: skip

    print(f"making {args.rows:,} records per customer ...", flush=True)
    rated = records(rated_customer.pk, args.rows, rng, "bench-rating-a")
    plain = records(plain_customer.pk, args.rows, rng, "bench-rating-b")

    book = RatingBook()
    answers = [(r.callee_e164, parse_iso_utc(r.answer_at), r.duration_ms) for r in rated]
    started = time.perf_counter()
    for callee, answer_at, duration in answers:
        book.rate(
            customer_id=rated_customer.pk, trunk_id=None, direction="outbound",
            callee_e164=callee, answer_at=answer_at, duration_ms=duration,
        )  # fmt: skip
    rating_s = time.perf_counter() - started
    rating_per_s = args.rows / rating_s
    print(f"rating alone: {rating_per_s:,.0f} CDRs/s")

    def batches(items: list) -> list[list]:
        return [items[i : i + BATCH] for i in range(0, len(items), BATCH)]

    # Alternate the two, twice, so a drift of the shared machine hits both.
    with_s = without_s = 0.0
    halves = len(rated) // 2
    for part in (slice(0, halves), slice(halves, None)):
        without_s += ingest(batches(plain[part]))
        with_s += ingest(batches(rated[part]))
    unrated = Cdr.objects.filter(edge="bench-rating-a").exclude(unrated_reason="").count()
    print(f"ingest without rating: {args.rows / without_s:,.0f} CDRs/s")
    print(f"ingest with rating:    {args.rows / with_s:,.0f} CDRs/s ({unrated:,} found no rate)")
    print(f"rating_ingest_ratio={without_s / with_s:.2f}")
    Cdr.objects.filter(edge__startswith="bench-rating").delete()
    print(f"rating_cdrs_per_s={rating_per_s:.0f}")


if __name__ == "__main__":
    main()
