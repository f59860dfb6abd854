"""The export job's progress page in a real browser: the bar moves as the job advances, then the
download link appears.

Headless Chromium (Debian package ``chromium``) is driven over the DevTools protocol with the
``websockets`` client uvicorn already installs; the page runs against Django's live server,
logged in as staff. The job is advanced by the test itself, as a worker would (the worker's own
progress reporting is tested in test_cdr_exports.py).
"""

import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse

from billing.choices import ExportStatus
from billing.models import ExportJob

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (Debian package chromium)"),
]


class DevTools:
    """The few DevTools calls the test needs, over one page's websocket."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=30))
            if message.get("id") == call_id:
                assert "error" not in message, message
                return message.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")


@pytest.fixture
def browser(tmp_path):
    from websockets.sync.client import connect

    profile = tmp_path / "profile"
    process = subprocess.Popen(
        [
            CHROMIUM,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            assert process.poll() is None, "chromium exited"
            assert time.monotonic() < deadline, "chromium did not open its DevTools port"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
            pages = [t for t in json.load(answer) if t["type"] == "page"]
        with connect(pages[0]["webSocketDebuggerUrl"], max_size=None) as ws:
            yield DevTools(ws)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_for(browser: DevTools, expression: str, seen: list[Any], until: Any) -> None:
    deadline = time.monotonic() + 20
    while True:
        value = browser.evaluate(expression)
        if not seen or seen[-1] != value:
            seen.append(value)
        if value == until:
            return
        assert time.monotonic() < deadline, f"{expression} stayed {value!r} (seen {seen})"
        time.sleep(0.1)


def test_progress_bar_moves_then_offers_the_download(
    browser, live_server, client, staff_user, settings, tmp_path
):
    settings.CDR_EXPORT_DIR = tmp_path
    staff_user.is_superuser = True
    staff_user.save()
    client.force_login(staff_user)
    job = ExportJob.objects.create(
        format="csv", columns=["id"], status=ExportStatus.RUNNING, rows_total=1000
    )
    browser.call("Network.enable")
    browser.call(
        "Network.setCookie",
        name=settings.SESSION_COOKIE_NAME,
        value=client.cookies[settings.SESSION_COOKIE_NAME].value,
        url=live_server.url,
    )
    browser.call(
        "Page.navigate",
        url=live_server.url + reverse("admin:billing_exportjob_progress", args=[job.pk]),
    )
    bar = "(document.getElementById('export-bar') || {}).value"
    seen: list[Any] = []
    _wait_for(browser, bar, seen, 0)

    # The worker writes rows: the page, polling the API, moves its bar.
    ExportJob.objects.filter(pk=job.pk).update(rows_written=250)
    _wait_for(browser, bar, seen, 25)
    ExportJob.objects.filter(pk=job.pk).update(rows_written=700)
    _wait_for(browser, bar, seen, 70)
    assert browser.evaluate("document.getElementById('export-download').hidden") is True

    # Done: the bar is full and the link to the file appears.
    (Path(tmp_path) / "job.csv").write_text("id\n1\n")
    ExportJob.objects.filter(pk=job.pk).update(
        status=ExportStatus.DONE, rows_written=1000, file_name="job.csv"
    )
    _wait_for(browser, bar, seen, 100)
    assert [v for v in seen if v is not None] == [0, 25, 70, 100]
    link = "document.querySelector('#export-download a').href"
    assert browser.evaluate("document.getElementById('export-download').hidden") is False
    assert browser.evaluate(link) == f"{live_server.url}/api/v1/cdr-exports/{job.pk}/download/"
    assert browser.evaluate("document.getElementById('export-status').textContent") == "done"
