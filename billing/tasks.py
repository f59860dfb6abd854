"""Celery tasks of the billing app: CDR export jobs and the expiry of their files, consuming the
CDR stream and keeping monthly partitions ahead, recurring charges, the ledger check, the
prepaid customers' calls in progress.

Each takes ids (or nothing) and calls a service; each is safe to run twice or at once on several
workers: the consumer group shares the stream's entries, partitions are created under an
advisory lock, recurring charges are idempotent per number and month.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from . import exports, services
from .partitions import cdr_partitions_ensure as ensure_partitions


@shared_task(acks_late=True)
def run_cdr_export(job_id: int) -> str | None:
    """Write an export job's file; its status afterwards. Files past their age go first (so
    they expire even where no beat runs, as in the embedded default)."""
    exports.cdr_export_jobs_expire()
    job = exports.cdr_export_job_run(job_id=job_id)
    return None if job is None else job.status


@shared_task
def expire_cdr_exports() -> int:
    """Delete export files past CDR_EXPORT_FILE_TTL_HOURS (beat: every 10 minutes)."""
    return exports.cdr_export_jobs_expire()


logger = logging.getLogger(__name__)


@shared_task
def post_recurring_charges() -> int:
    """This month's number charges (a number assigned since the last run is charged now)."""
    return services.recurring_charges_post(month=services.month_of(timezone.now()))


@shared_task(ignore_result=True)
def check_prepaid_calls() -> int:
    """End prepaid customers' calls that would outrun their balance (beat: every
    PREPAID_CHECK_SECONDS); the number of calls ended."""
    return len(services.prepaid_calls_check())


@shared_task
def verify_ledger() -> int:
    wrong = services.ledger_verify()
    for customer_id, (stored, summed) in wrong.items():
        logger.error(
            "balance of customer %s is %s but its ledger sums to %s", customer_id, stored, summed
        )
    return len(wrong)


logger = logging.getLogger(__name__)


@shared_task(ignore_result=True)
def cdr_consume() -> int:
    """Store what the edges shipped to the CDR stream for up to CDR_CONSUME_BUDGET seconds
    (`billing.cdr_stream`); the number of stream entries done."""
    import redis

    from .cdr_stream import CdrStreamConsumer

    client = redis.Redis.from_url(
        settings.CDR_STREAM_REDIS_URL, socket_timeout=10, socket_connect_timeout=2
    )
    try:
        consumer = CdrStreamConsumer(
            client,
            count=settings.CDR_CONSUME_ENTRIES,
            claim_idle=settings.CDR_CLAIM_IDLE_SECONDS,
        )
        return consumer.consume(budget=settings.CDR_CONSUME_BUDGET)
    except (redis.ConnectionError, redis.TimeoutError) as error:
        # The next round (beat) tries again; the edges keep what is unconfirmed.
        logger.warning("CDR stream unreachable: %s", error)
        return 0
    finally:
        client.close()


@shared_task(ignore_result=True)
def cdr_partitions_ensure() -> list[str]:
    """Create the CDR table's monthly partitions CDR_PARTITION_MONTHS_AHEAD months ahead."""
    return ensure_partitions(months_ahead=settings.CDR_PARTITION_MONTHS_AHEAD)
