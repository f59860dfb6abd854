"""Monthly partitions of the CDR table on PostgreSQL (declarative partitioning, plain SQL).

Migration 0002 makes ``billing_cdr`` a table partitioned by range of ``setup_at`` with a
default partition, so a row always has somewhere to go. `cdr_partitions_ensure` (run by the
periodic task `billing.tasks.cdr_partitions_ensure`, hourly) creates one partition per month
from last month to ``months_ahead`` months ahead. If rows for
a month have already landed in the default partition (a clock far ahead, a task that did not
run), they are moved into the new month's partition in the same transaction: PostgreSQL
refuses to attach a partition whose range the default partition already holds rows of.
SQLite keeps a plain table; there this does nothing.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from django.db import connection, transaction

from .models import Cdr

DEFAULT_PARTITION = "billing_cdr_default"


def month_start(day: date, *, add: int = 0) -> date:
    """The first day of ``day``'s month moved by ``add`` months."""
    index = day.year * 12 + day.month - 1 + add
    return date(index // 12, index % 12 + 1, 1)


def partition_name(month: date) -> str:
    return f"{Cdr._meta.db_table}_y{month.year:04d}m{month.month:02d}"


def cdr_partitions() -> list[str]:
    """The names of the CDR table's partitions, the default one included."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT child.relname FROM pg_inherits"
            " JOIN pg_class parent ON parent.oid = pg_inherits.inhparent"
            " JOIN pg_class child ON child.oid = pg_inherits.inhrelid"
            " WHERE parent.relname = %s ORDER BY child.relname",
            [Cdr._meta.db_table],
        )
        return [name for (name,) in cursor.fetchall()]


def cdr_partitions_ensure(*, today: date | None = None, months_ahead: int = 3) -> list[str]:
    """Create the monthly partitions from last month to ``months_ahead`` ahead; those created."""
    if connection.vendor != "postgresql":
        return []
    today = today or datetime.now(UTC).date()
    created = []
    for offset in range(-1, months_ahead + 1):
        month = month_start(today, add=offset)
        if _create_month(month):
            created.append(partition_name(month))
    return created


@transaction.atomic
def _create_month(month: date) -> bool:
    table, name = Cdr._meta.db_table, partition_name(month)
    low = datetime(month.year, month.month, 1, tzinfo=UTC)
    nxt = month_start(month, add=1)
    high = datetime(nxt.year, nxt.month, 1, tzinfo=UTC)
    with connection.cursor() as cursor:
        # One creator at a time (two workers running the task); the check is then reliable.
        cursor.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [table])
        cursor.execute("SELECT to_regclass(%s)", [name])
        if cursor.fetchone()[0] is not None:
            return False
        # CHECK constraints too: a partition must have every one of its parent's to attach.
        cursor.execute(
            f"CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
        )
        cursor.execute(
            f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION}"
            f" WHERE setup_at >= %s AND setup_at < %s RETURNING *)"
            f" INSERT INTO {name} SELECT * FROM moved",
            [low, high],
        )
        cursor.execute(
            f"ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES FROM (%s) TO (%s)",
            [low, high],
        )
    return True
