"""Reads of the billing app: the call-history summary (aggregated in SQL), balances and who is
out of credit, and the rating book that ingest rates CDRs with."""

from __future__ import annotations

import bisect
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.db.models import Count, Q, QuerySet, Sum

from accounts.choices import BillingMode
from edge.cdr import parse_iso_utc
from trunking.models import EdgeNode, Trunk
from trunking.tokens import edge_node_token

from .models import Balance, Cdr, Rate, RateAssignment, RateDeck
from .rating import Rate as RateRow
from .rating import Rated, RateTable, Unrated, UnratedReason, rate_call

if TYPE_CHECKING:
    from trunking.selectors import EdgeCalls

_ANSWERED = Q(answer_at__isnull=False)
_FOUR_PLACES = Decimal("0.0001")
_TWO_PLACES = Decimal("0.01")


def _figures(
    attempts: int, answered: int, talk_ms: int | None, billable: int | None
) -> dict[str, Any]:
    """ASR, ACD and minutes from the sums: ASR = answered / attempts, ACD = mean talk time
    of the answered calls in seconds, minutes = talk time, billable minutes = billed seconds."""
    talk_ms = talk_ms or 0
    return {
        "attempts": attempts,
        "answered": answered,
        "asr": (Decimal(answered) / attempts).quantize(_FOUR_PLACES) if attempts else None,
        "acd_seconds": (
            (Decimal(talk_ms) / answered / 1000).quantize(_TWO_PLACES) if answered else None
        ),
        "minutes": (Decimal(talk_ms) / 60_000).quantize(_TWO_PLACES),
        "billable_minutes": (Decimal(billable or 0) / 60).quantize(_TWO_PLACES),
    }


_SUMS = {
    "attempts": Count("id"),
    "answered": Count("id", filter=_ANSWERED),
    "talk_ms": Sum("duration_ms", filter=_ANSWERED),
    "billable": Sum("billable_seconds"),
}


def cdr_summary(*, queryset: QuerySet[Cdr]) -> dict[str, Any]:
    """Attempts, answered, ASR, ACD and minutes of ``queryset``, in total, by trunk and by
    reason. Three aggregate queries and one for the trunks' names, whatever the row count."""
    base = queryset.order_by()
    total = base.aggregate(**_SUMS)
    by_trunk = list(base.values("trunk_id").annotate(**_SUMS).order_by("trunk_id"))
    by_reason = list(
        base.values("reason")
        .annotate(attempts=Count("id"), answered=Count("id", filter=_ANSWERED))
        .order_by("-attempts", "reason")
    )
    trunk_ids = [row["trunk_id"] for row in by_trunk if row["trunk_id"] is not None]
    names = dict(Trunk.objects.filter(pk__in=trunk_ids).values_list("pk", "name"))
    attempts = total["attempts"]
    return {
        **_figures(total["attempts"], total["answered"], total["talk_ms"], total["billable"]),
        "by_trunk": [
            {
                "trunk": row["trunk_id"],
                "trunk_name": names.get(row["trunk_id"]),
                **_figures(row["attempts"], row["answered"], row["talk_ms"], row["billable"]),
            }
            for row in by_trunk
        ],
        "by_reason": [
            {
                "reason": row["reason"],
                "attempts": row["attempts"],
                "answered": row["answered"],
                "share": (Decimal(row["attempts"]) / attempts).quantize(_FOUR_PLACES),
            }
            for row in by_reason
        ],
    }


ZERO = Decimal("0")


def out_of_credit(*, billing_mode: str, credit_limit: Decimal, balance: Decimal) -> bool:
    """The one rule for refusing a customer's calls for money (`no_credit` on the edge): a
    prepaid customer at or below zero, a postpaid one at or beyond its credit limit."""
    if billing_mode == BillingMode.POSTPAID:
        return balance <= -credit_limit
    return balance <= ZERO


def balances_by_customer() -> dict[int, Decimal]:
    """Every customer's balance that has one (customers without a ledger are at zero)."""
    return dict(Balance.objects.values_list("customer_id", "amount"))


def customer_balance(customer_id: int) -> Decimal:
    amount = Balance.objects.filter(customer_id=customer_id).values_list("amount", flat=True)
    return next(iter(amount), ZERO)


# --- prepaid calls in progress -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PrepaidExposure:
    """A prepaid customer with calls in progress: its balance, what those calls have cost so
    far, and the calls (edge node, the edge's call row)."""

    customer_id: int
    balance: Decimal
    running_cost: Decimal
    calls: tuple[tuple[EdgeNode, dict[str, Any]], ...]

    @property
    def remaining(self) -> Decimal:
        return self.balance - self.running_cost

    @property
    def out_of_credit(self) -> bool:
        """`out_of_credit`, the one rule, on the balance left after the calls in progress."""
        return out_of_credit(
            billing_mode=BillingMode.PREPAID, credit_limit=ZERO, balance=self.remaining
        )


def running_cost(book: RatingBook, call: dict[str, Any], now: datetime) -> Decimal:
    """What ``call`` (a row of an edge's ``GET /calls``) has cost so far: rated as ingest will
    rate its CDR (`RatingBook.rate`), from its answer time and its duration until ``now``, so
    the connect fee and the first block count from the answer. Nothing before the answer;
    nothing for a call ingest would leave unrated (no deck or no rate: the operator's list)."""
    answer_at = _edge_time(call.get("answer_at"))
    customer_id = call.get("customer_id")
    if answer_at is None or not isinstance(customer_id, int):
        return ZERO
    trunk_id = call.get("trunk_id")
    rating = book.rate(
        customer_id=customer_id,
        trunk_id=trunk_id if isinstance(trunk_id, int) else None,
        direction=str(call.get("direction") or ""),
        callee_e164=str(call.get("callee") or ""),
        answer_at=answer_at,
        duration_ms=max(int((now - answer_at).total_seconds() * 1000), 1),
    )
    return rating.cost or ZERO


def _edge_time(text: object) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return parse_iso_utc(text)
    except ValueError:
        return None


def prepaid_exposures(
    *, answers: Iterable[EdgeCalls], now: datetime, book: RatingBook | None = None
) -> list[PrepaidExposure]:
    """Every prepaid customer with calls in progress on the edges that answered, with its
    balance and the running cost of those calls. Two queries and a `RatingBook` (none while
    no call is up)."""
    from accounts.models import Customer

    by_customer: dict[int, list[tuple[EdgeNode, dict[str, Any]]]] = {}
    for answer in answers:
        for call in answer.calls:
            customer_id = call.get("customer_id")
            if isinstance(customer_id, int):
                by_customer.setdefault(customer_id, []).append((answer.node, call))
    if not by_customer:
        return []
    prepaid = set(
        Customer.objects.filter(pk__in=by_customer, billing_mode=BillingMode.PREPAID).values_list(
            "pk", flat=True
        )
    )
    if not prepaid:
        return []
    balances = dict(
        Balance.objects.filter(customer_id__in=prepaid).values_list("customer_id", "amount")
    )
    book = book or RatingBook()
    exposures = []
    for customer_id in sorted(prepaid):
        calls = by_customer[customer_id]
        cost = sum((running_cost(book, call, now) for _, call in calls), ZERO)
        exposures.append(
            PrepaidExposure(
                customer_id=customer_id,
                balance=balances.get(customer_id, ZERO),
                running_cost=cost,
                calls=tuple(calls),
            )
        )
    return exposures


# --- rating -----------------------------------------------------------------------------------

RATE_FIELDS = (
    "id", "prefix", "destination", "rate_per_minute", "connect_fee", "first_block", "increment",
    "effective_from", "effective_to",
)  # fmt: skip
# Compiled rate tables by deck id, with the deck's `updated_at` they were built from. A deck's
# rows change only through services that bump `updated_at`, so a table is rebuilt only then.
_TABLES: dict[int, tuple[datetime, RateTable]] = {}


def rate_table(deck_id: int, updated_at: datetime) -> RateTable:
    cached = _TABLES.get(deck_id)
    if cached is not None and cached[0] == updated_at:
        return cached[1]
    rows = [
        RateRow(
            id=r["id"],
            prefix=r["prefix"],
            destination=r["destination"],
            rate_per_minute=r["rate_per_minute"],
            connect_fee=r["connect_fee"],
            first_block=r["first_block"],
            increment=r["increment"],
            effective_from=r["effective_from"],
            effective_to=r["effective_to"],
        )
        for r in Rate.objects.filter(deck_id=deck_id)
        .order_by()
        .values(*RATE_FIELDS)
        .iterator(chunk_size=20_000)
    ]
    table = RateTable(rows)
    _TABLES[deck_id] = (updated_at, table)
    return table


@dataclass(slots=True)
class Rating:
    """What ingest stores on a CDR."""

    rate_id: int | None
    billed_seconds: int
    cost: Decimal | None
    currency: str
    unrated_reason: str


UNANSWERED = Rating(rate_id=None, billed_seconds=0, cost=ZERO, currency="", unrated_reason="")


class RatingBook:
    """What rating a batch of CDRs needs, read once per batch: the assignments (a small table),
    the decks' currencies and versions, the customers' currencies, and the assigned decks' rate
    tables (from the process-wide cache, rebuilt only for a deck that changed)."""

    def __init__(self) -> None:
        from accounts.models import Customer

        self._decks = {
            d["id"]: (d["currency"], d["updated_at"])
            for d in RateDeck.objects.values("id", "currency", "updated_at")
        }
        self._currency = dict(Customer.objects.values_list("id", "currency"))
        # (customer, direction) -> [(valid_from, trunk_id or None, deck_id)], by start.
        self._assignments: dict[tuple[int, str], list[tuple[datetime, int | None, int]]] = {}
        for a in RateAssignment.objects.order_by("valid_from").values(
            "customer_id", "direction", "valid_from", "trunk_id", "deck_id"
        ):
            key = (a["customer_id"], a["direction"])
            self._assignments.setdefault(key, []).append(
                (a["valid_from"], a["trunk_id"], a["deck_id"])
            )
        # Every assigned deck's table, now: rating runs inside ingest's COPY, when the
        # connection can run no other query.
        assigned = {deck for rows in self._assignments.values() for _, _, deck in rows}
        self._tables = {
            deck: rate_table(deck, self._decks[deck][1]) for deck in assigned if deck in self._decks
        }

    def deck_for(
        self, customer_id: int, trunk_id: int | None, direction: str, at: datetime
    ) -> int | None:
        """The deck pricing this call: the latest assignment started by `at`, the trunk's own
        before the customer's."""
        rows = self._assignments.get((customer_id, direction))
        if not rows:
            return None
        if len(rows) == 1:  # the common case: one deck for all the customer's trunks
            start, trunk, deck = rows[0]
            return deck if start <= at and (trunk is None or trunk == trunk_id) else None
        end = bisect.bisect_right(rows, at, key=_start)
        customer_wide = None
        for _begins, trunk, deck in reversed(rows[:end]):
            if trunk is not None and trunk == trunk_id:
                return deck
            if trunk is None and customer_wide is None:
                customer_wide = deck
        return customer_wide

    def rate(
        self,
        *,
        customer_id: int | None,
        trunk_id: int | None,
        direction: str,
        callee_e164: str,
        answer_at: datetime | None,
        duration_ms: int,
    ) -> Rating:
        if answer_at is None:
            return UNANSWERED
        deck_id = (
            self.deck_for(customer_id, trunk_id, direction, answer_at)
            if customer_id is not None
            else None
        )
        if deck_id is None:
            return _unrated(UnratedReason.NO_DECK, duration_ms)
        currency = self._decks[deck_id][0]
        if currency != self._currency.get(customer_id or 0):
            return _unrated(UnratedReason.CURRENCY_MISMATCH, duration_ms)
        result = rate_call(self._tables[deck_id], callee_e164, answer_at, duration_ms)
        if isinstance(result, Rated):
            return Rating(
                rate_id=result.rate.id,
                billed_seconds=result.billable_seconds,
                cost=result.cost,
                currency=currency,
                unrated_reason="",
            )
        assert isinstance(result, Unrated)
        return _unrated(result.reason, duration_ms)


def _start(row: tuple[datetime, int | None, int]) -> datetime:
    return row[0]


def _unrated(reason: UnratedReason, duration_ms: int) -> Rating:
    return _UNRATED[reason]


# One per reason, shared as `UNANSWERED` is (ingest rates every record of a batch).
_UNRATED = {
    reason: Rating(
        rate_id=None, billed_seconds=0, cost=None, currency="", unrated_reason=reason.value
    )
    for reason in UnratedReason
}


def unrated_cdrs() -> Any:
    """Answered calls that found no price: the operator's list to fix (then re-rate)."""
    from .models import Cdr

    return Cdr.objects.exclude(unrated_reason="")


_USAGE_KEYS = (
    "customer_id", "customer__name", "rate__destination", "rate__prefix", "currency",
    "unrated_reason",
)  # fmt: skip


_USAGE_KEYS = (
    "customer_id", "customer__name", "rate__destination", "rate__prefix", "currency",
    "unrated_reason",
)  # fmt: skip


def usage_by_destination(*, queryset: QuerySet[Cdr]) -> list[dict[str, Any]]:
    """Answered calls of ``queryset`` summed by customer, destination (rate row) and currency;
    unrated ones by their reason, with no amount. One query."""
    rows = (
        queryset.filter(answer_at__isnull=False)
        .order_by()
        .values(*_USAGE_KEYS)
        .annotate(calls=Count("id"), seconds=Sum("billed_seconds"), amount=Sum("cost"))
        .order_by("customer__name", "customer_id", "rate__destination", "rate__prefix")
    )
    return [
        {
            "customer": row["customer_id"],
            "customer_name": row["customer__name"],
            "destination": row["rate__destination"],
            "prefix": row["rate__prefix"],
            "currency": row["currency"],
            "calls": row["calls"],
            "billed_minutes": (Decimal(row["seconds"] or 0) / 60).quantize(_TWO_PLACES),
            "amount": row["amount"],
            "unrated_reason": row["unrated_reason"],
        }
        for row in rows
    ]


CDR_METRIC_PREFIX = "trunkline_edge_cdr_"
METRICS_TIMEOUT = 1.0


def edge_cdr_metrics(*, node: EdgeNode) -> dict[str, float] | None:
    """The edge's own CDR shipping figures from its ``/metrics`` (journalled, shipped,
    committed, lag in records and seconds, ...), by name without the prefix and ``_total``;
    None if the edge does not answer within a second."""
    request = urllib.request.Request(
        node.control_url.rstrip("/") + "/metrics",
        headers={"Authorization": f"Bearer {edge_node_token(node)}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=METRICS_TIMEOUT) as response:
            text = response.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
    figures = {}
    for line in text.splitlines():
        if not line.startswith(CDR_METRIC_PREFIX) or "_created" in line:
            continue
        name, _, value = line.partition(" ")
        try:
            figures[name.removeprefix(CDR_METRIC_PREFIX).removesuffix("_total")] = float(value)
        except ValueError:
            continue
    return figures
