"""Reads of the billing app: the call-history summary, aggregated in SQL."""

from decimal import Decimal
from typing import Any

from django.db.models import Count, Q, QuerySet, Sum

from trunking.models import Trunk

from .models import Cdr

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
