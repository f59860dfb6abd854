"""A new user's first hour, end to end, on `make run`'s embedded default (issue 10).

Exactly what the README says, read from the README so that the two cannot drift: a fresh
SQLite database, `migrate`, `seed_demo`, `runplatform` (web app and SIP edge on one event loop;
here on free ports), then the shell blocks of "Place your first call" (SIPp: an inbound call
to a demo DID and an outbound call through the demo trunk, the CDR journal, `load_cdrs`) and
"Onboard a trunk through the API" (curl and jq), run by bash. Only the addresses change: the
README's 127.0.0.1:5060 and :8000 become the free ports, `var/` the test's directory, and
`tk_...` the key `seed_demo` printed. Then each surprise of the issue is checked on the live
server.
"""

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from edge.tests.sipp_harness import free_port, require_sipp

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.sipp, pytest.mark.slow]


def readme_block(heading: str) -> str:
    """The first ```sh block under ``### heading`` in README.md."""
    text = (REPO / "README.md").read_text()
    section = text.split(f"### {heading}\n", 1)[1]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, f"no sh block under {heading!r}"
    return match.group(1)


class Platform:
    """`manage.py runplatform` on free ports, with its output collected."""

    def __init__(self, env: dict[str, str], web_port: int) -> None:
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", "runplatform", "--port", str(web_port)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"runplatform never said {text!r}:\n{''.join(self.lines)}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def run_block(script: str, env: dict[str, str], timeout: float = 180.0) -> str:
    result = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, (
        f"{script}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    return result.stdout


def http(method: str, url: str, key: str) -> tuple[int, str, dict]:
    request = urllib.request.Request(
        url, method=method, headers={"Authorization": f"Api-Key {key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], json.loads(error.read())


def test_first_hour(tmp_path):
    require_sipp()
    assert shutil.which("jq") and shutil.which("curl"), "the README's API walk uses curl and jq"
    var = tmp_path / "var"
    edge_port, control_port, web_port = free_port(), free_port(), free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "REDIS_URL") and not key.startswith(("EDGE_", "DJANGO_"))
    }
    env |= {
        "DEBUG": "1",
        "SECRET_KEY": "first-hour-test-key",
        "TRUNKLINE_VAR_DIR": str(var),  # SQLite at var/trunkline.sqlite3, the journal at var/cdr
        "EDGE_SIP_ADDRESS": f"127.0.0.1:{edge_port}",
        "EDGE_CONTROL_ADDRESS": f"127.0.0.1:{control_port}",
    }
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "--no-input", "-v0"], cwd=REPO, env=env, check=True)
    seeded = subprocess.run(
        [*manage, "seed_demo"], cwd=REPO, env=env, check=True, capture_output=True, text=True
    ).stdout
    assert "PBX 127.0.0.2" in seeded and "carrier gateway 127.0.0.3:5080" in seeded, seeded
    key = re.search(r"API key:\s+(tk_\S+)", seeded).group(1)

    def localise(block: str) -> str:
        return (
            block.replace("127.0.0.1:5060", f"127.0.0.1:{edge_port}")
            .replace("http://127.0.0.1:8000", f"http://127.0.0.1:{web_port}")
            .replace("var/cdr", str(var / "cdr"))
            .replace("KEY=tk_...", f"KEY={key}")
        )

    platform = Platform(env, web_port)
    try:
        platform.wait_for("edge ready")

        # --- Place your first call: both SIPp calls succeed, and each has its CDR.
        calls = run_block(localise(readme_block("Place your first call")), env)
        records = [
            json.loads(line)
            for path in sorted((var / "cdr").glob("cdr-*.jsonl"))
            for line in path.read_text().splitlines()
        ]
        assert [(r["direction"], r["final_code"]) for r in records] == [
            ("inbound", 200),
            ("outbound", 200),
        ], records
        assert records[0]["callee_e164"] == "+14155550100"
        assert records[0]["answered_by"] == "sip:127.0.0.2:5090"
        assert records[1]["source_ip"] == "127.0.0.2" and records[1]["trunk_id"] is not None
        # Shipped by the edge on its own (in-process) or loaded by load_cdrs: either way once.
        assert "2 record(s) read" in calls and "0 bad line(s)" in calls
        with sqlite3.connect(var / "trunkline.sqlite3") as db:
            stored = db.execute("SELECT direction, final_code FROM billing_cdr ORDER BY id")
            assert stored.fetchall() == [("inbound", 200), ("outbound", 200)]

        # --- Onboard a trunk through the API, as the README does it.
        walk = run_block(localise(readme_block("Onboard a trunk through the API")), env)
        assert f"sip:127.0.0.1:{edge_port};transport=udp" in walk, walk
        assert '"+442079460958"' in walk  # a national number, stored as E.164
        assert '"channel_limit":["Unknown field."]' in walk  # not silently ignored
        assert '"ordering":["Cannot order by channel_limit' in walk
        assert '"code":"conflict"' in walk and '"held_by":["1 phone number"]' in walk
        assert "\n204\n" in walk  # deleted once its number was released
        assert '"deleted with trunk Demo Telecom / london-office"' in walk, walk

        # --- The JSON API answers JSON, and out-of-range values are 400s (on SQLite).
        base = f"http://127.0.0.1:{web_port}/api/v1"
        for url, status in (
            (f"{base}/no-such-thing/", 404),
            (f"{base}/trunks/?customer=99999999999999999999", 400),
            (f"{base}/numbers/?trunk=99999999999999999999", 400),
            (f"{base}/trunks/?channel_limit=2", 400),
        ):
            code, content_type, body = http("GET", url, key)
            assert (code, content_type) == (status, "application/json"), (url, body)
            assert body["code"] and body["detail"], body
        code, _, body = http("PUT", f"{base}/credentials/1/", key)
        assert code == 405 and body["code"] == "method_not_allowed"
    finally:
        platform.stop()
