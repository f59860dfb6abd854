"""Celery tasks of the billing app. Each calls a service and is safe to run again."""

import logging

from celery import shared_task
from django.utils import timezone

from . import services

logger = logging.getLogger(__name__)


@shared_task
def post_recurring_charges() -> int:
    """This month's number charges (a number assigned since the last run is charged now)."""
    return services.recurring_charges_post(month=services.month_of(timezone.now()))


@shared_task
def verify_ledger() -> int:
    wrong = services.ledger_verify()
    for customer_id, (stored, summed) in wrong.items():
        logger.error(
            "balance of customer %s is %s but its ledger sums to %s", customer_id, stored, summed
        )
    return len(wrong)
