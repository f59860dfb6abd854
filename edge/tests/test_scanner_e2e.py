"""A real SIP scanner (sipvicious' svmap, Debian package `sipvicious`) finds nothing on the
edge: its requests are dropped unanswered and each drop is one fail2ban-readable log line."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edge.tests.factories import snapshot_doc, trunk_doc
from edge.tests.sipp_harness import PBX_IP, STRANGER_IP, EdgeProcess

pytestmark = pytest.mark.skipif(
    shutil.which("svmap") is None, reason="svmap not installed (apt-get install sipvicious)"
)

LOG_LINE = re.compile(r"trunkline-security event=(?P<event>\S+) src=(?P<host>\S+) ")


def test_svmap_finds_nothing_and_is_logged(tmp_path: Path) -> None:
    edge = EdgeProcess(tmp_path / "edge", snapshot_doc(trunks=[trunk_doc(acl=[f"{PBX_IP}/32"])]))
    edge.start()
    try:
        scan = subprocess.run(
            ["svmap", f"{edge.ip}", "-p", str(edge.sip_port), "-b", STRANGER_IP, "-t", "0.5"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        # svmap prints a table of the SIP devices that answered: none did.
        assert edge.ip not in scan.stdout, scan.stdout
    finally:
        edge.stop(grace=5)
    events = [m for m in map(LOG_LINE.search, edge.stderr_path.read_text().splitlines()) if m]
    assert events and {(m["event"], m["host"]) for m in events} == {("scanner", STRANGER_IP)}
