"""A stand-in edge for the CDR pipeline's fault tests: journals records and ships them as the
edge does (the same `CdrJournal`, `JournalShipper` and `RedisShipTransport`), without SIP.

``python -m billing.tests.journal_writer DIR NODE REDIS_URL COUNT RATE``: appends COUNT records
at RATE per second in journal batches of 10 (each fsynced, as the edge does), writing the ids of
every flushed batch to DIR/journalled.txt after the flush; then keeps shipping until SIGTERM.
Imports nothing from Django.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from pathlib import Path

from edge.cdr import iso_utc
from edge.runtime.cdr_shipper import JournalShipper, RedisShipTransport, ShipperThread
from edge.runtime.journal import CdrJournal
from edge.tests.test_cdr import make_cdr

BATCH = 10


def main() -> int:
    directory, node, url = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    count, rate = int(sys.argv[4]), float(sys.argv[5])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    journal = CdrJournal(directory / "journal", node=node, rotate_bytes=16 * 1024)
    shipper = ShipperThread(
        JournalShipper(
            directory / "journal",
            node=node,
            transport=RedisShipTransport(url, node=node, timeout=1),
            resend_after=20,
        ),
        interval=0.1,
    )
    shipper.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    ids = (directory / "journalled.txt").open("a")
    start = time.monotonic()
    for n in range(0, count, BATCH):
        batch = []
        for _ in range(min(BATCH, count - n)):
            wall = time.time()
            record = make_cdr(
                edge=node, customer_id=None, trunk_id=None,
                setup_at=iso_utc(wall - 70), ringing_at=iso_utc(wall - 68),
                answer_at=iso_utc(wall - 66), end_at=iso_utc(wall - 4.8),
            )  # fmt: skip
            journal.append(record, now=0.0)
            batch.append(record.call_id)
        journal.flush()
        ids.write("".join(f"{call_id}\n" for call_id in batch))
        ids.flush()
        delay = start + (n + BATCH) / rate - time.monotonic()
        if delay > 0 and stop.wait(delay):
            break
    print("written", flush=True)
    stop.wait()
    journal.close()
    shipper.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
