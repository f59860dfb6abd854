"""Celery tasks of the billing app: CDR export jobs and the expiry of their files, recurring
charges, the ledger check.

Tasks take ids and call the functions of `billing.exports` and `billing.services`; each is safe
to run again.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.utils import timezone

from . import exports, services


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


@shared_task
def verify_ledger() -> int:
    wrong = services.ledger_verify()
    for customer_id, (stored, summed) in wrong.items():
        logger.error(
            "balance of customer %s is %s but its ledger sums to %s", customer_id, stored, summed
        )
    return len(wrong)
