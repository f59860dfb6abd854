"""Celery tasks of the billing app: CDR export jobs and the expiry of their files.

Tasks take ids and call the functions of `billing.exports`.
"""

from celery import shared_task

from . import exports


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
