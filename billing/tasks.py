"""Celery tasks of the billing app: consume the CDR stream, keep monthly partitions ahead.

Both are periodic (``CELERY_BEAT_SCHEDULE``) and safe to run twice or at once on several
workers: the consumer group shares the stream's entries, and partitions are created under an
advisory lock.
"""

import logging

from celery import shared_task
from django.conf import settings

from .partitions import cdr_partitions_ensure as ensure_partitions

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
