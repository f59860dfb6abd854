"""The live board end to end, in a real browser: the embedded platform (`manage.py
runplatform`: web app and SIP edge on one loop, SQLite, the in-memory channel layer), a call
placed with SIPp through the edge, Debian's Chromium driven by Playwright.

The call appears on the board with the trunk's channel gauge at 1; the operator hangs it up
from the page; SIPp (caller and callee) receives the BYE; the call leaves the board and the
gauge returns to 0. A refused call (a blocked destination) shows in the 15-minute chart. A
screenshot of the board with the call up is kept in var/artifacts/.

Chromium is /usr/bin/chromium (Debian's package, installed by .ci/run); no browser is
downloaded. Runs on its own database (an SQLite file in a temporary directory), so it needs no
PostgreSQL; it ignores DATABASE_URL and REDIS_URL on purpose: it tests the embedded default.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.tests import sipp_harness as h

pytestmark = [pytest.mark.slow, pytest.mark.sipp]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
ARTIFACTS = h.REPO / "var" / "artifacts"
STAFF_PASSWORD = "e2e-operator-pass"
CALLER, CALLEE = "+14155550100", "+442071234567"
TIMEOUT_MS = 10_000  # below the board's 15 s resync: events must do it

SEED = """
from decimal import Decimal
from accounts.models import Customer, User
from trunking.models import Carrier, CarrierGateway, IpAclEntry, PhoneNumber, Trunk
User.objects.create_user("operator", "ops@example.test", {password!r}, is_staff=True)
acme = Customer.objects.create(name="Acme", billing_mode="postpaid", credit_limit=Decimal("100"))
trunk = Trunk.objects.create(customer=acme, name="acme-pbx", max_channels=3, max_cps=5,
                             caller_id_policy="pass_through", blocked_prefixes=["+1900"])
IpAclEntry.objects.create(trunk=trunk, cidr="{pbx}/32")
PhoneNumber.objects.create(number={caller!r}, customer=acme, trunk=trunk)
carrier = Carrier.objects.create(name="Carrier One")
CarrierGateway.objects.create(carrier=carrier, host="{carrier}", port={carrier_port})
"""


def _need(what: str, present: bool) -> None:
    if present:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing (.ci/run installs it)")
    pytest.skip(f"{what} is missing")


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[dict[str, object]]:
    """runplatform on free ports with its own SQLite database, seeded; yields its addresses."""
    _need("sipp", h.sipp_binary() is not None)
    uas = h.Sipp(
        tmp_path, "callee", scenario_file=h.scenario("uas_basic.xml"), local_ip=h.CARRIER_IP,
        recv_timeout_ms=60_000, wall_timeout=90,
    )  # fmt: skip
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "REDIS_URL", "CELERY_TASK_ALWAYS_EAGER")
    }
    env.update(
        TRUNKLINE_VAR_DIR=str(tmp_path / "var"),
        DATABASE_URL=f"sqlite:///{tmp_path / 'board.sqlite3'}",
        DEBUG="1",
        SECRET_KEY="e2e-live-board-secret",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",
    )
    manage = [sys.executable, str(h.REPO / "manage.py")]
    subprocess.run([*manage, "migrate", "-v", "0"], env=env, cwd=h.REPO, check=True, timeout=120)
    seed = SEED.format(
        password=STAFF_PASSWORD, pbx=h.PBX_IP, caller=CALLER, carrier=h.CARRIER_IP,
        carrier_port=uas.local_port,
    )  # fmt: skip
    subprocess.run([*manage, "shell", "-c", seed], env=env, cwd=h.REPO, check=True, timeout=60)
    uas.start().wait_listening()
    platform = h.start_platform(manage, env, tmp_path)
    try:
        yield {
            "url": platform.url,
            "sip": (h.EDGE_IP, platform.sip_port),
            "uas": uas,
            "node": platform.node,
            "log": platform.log_path,
            "workdir": tmp_path,
        }
    finally:
        platform.stop()
        uas.stop(grace=2)


def test_a_call_appears_is_hung_up_from_the_page_and_leaves(platform) -> None:
    _need("/usr/bin/chromium", CHROMIUM.exists())
    sync_api = pytest.importorskip("playwright.sync_api")
    uac = h.Sipp(
        platform["workdir"], "caller", scenario_file=h.scenario("uac_wait_bye.xml"),
        local_ip=h.PBX_IP, remote=platform["sip"], keys={"caller": CALLER, "callee": CALLEE},
        recv_timeout_ms=60_000, wall_timeout=90,
    )  # fmt: skip
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            dialogs: list[str] = []
            page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
            page.goto(f"{platform['url']}/login/")
            page.fill("#id_username", "operator")
            page.fill("#id_password", STAFF_PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_selector('#t-status[data-state="live"]')
            gauge = page.locator('.trunk:has-text("acme-pbx") .gauge').first
            sync_api.expect(gauge.locator(".g-value")).to_have_text("0 / 3")
            node = platform["node"]
            edge_row = page.locator(f"#edges tr[data-edge={node}] td")
            sync_api.expect(edge_row.nth(3)).to_have_text("ok")
            sync_api.expect(edge_row.nth(1)).to_have_text(re.compile(r"^\d+$"))  # its version

            # A refusal (a blocked destination) shows in the chart's legend and the tile.
            refused = h.Sipp(
                platform["workdir"], "refused", scenario_file=h.scenario("uac_expect_refusal.xml"),
                local_ip=h.PBX_IP, remote=platform["sip"], variables={"expected": "403"},
                keys={"caller": CALLER, "callee": "+19005550123"}, wall_timeout=30,
            ).run()  # fmt: skip
            assert refused.ok, refused.explain()
            sync_api.expect(page.locator("#legend")).to_contain_text("destination_blocked")
            sync_api.expect(page.locator("#t-refused")).to_have_text("1")

            uac.start()
            row = page.locator("#viewport .row", has_text=CALLER)
            sync_api.expect(row).to_have_count(1)
            sync_api.expect(row.locator(".state")).to_have_text("answered")
            sync_api.expect(row).to_contain_text(CALLEE)
            sync_api.expect(row).to_contain_text("acme-pbx")
            sync_api.expect(row).to_contain_text(node)
            sync_api.expect(gauge.locator(".g-value")).to_have_text("1 / 3")
            sync_api.expect(page.locator("#t-active")).to_have_text("1")
            time.sleep(1.2)  # let the duration tick once for the picture
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "live-board.png"), full_page=True)

            row.locator("button.hangup").click()
            sync_api.expect(row).to_have_count(0)
            sync_api.expect(gauge.locator(".g-value")).to_have_text("0 / 3")
            sync_api.expect(page.locator("#t-active")).to_have_text("0")
            assert not dialogs, (
                f"the page reported {dialogs}\n{platform['log'].read_text()[-3000:]}"
            )
            _five_thousand_calls_render_only_the_visible_rows(context, platform["url"], sync_api)
        finally:
            browser.close()

    caller = uac.wait(timeout=20)
    assert caller.ok, caller.explain()  # its scenario ends only on the BYE it received
    assert caller.received("BYE"), caller.explain()
    callee = platform["uas"].wait(timeout=20)
    assert callee.received("BYE"), callee.explain()


def _five_thousand_calls_render_only_the_visible_rows(context, url, sync_api) -> None:
    """A board fed a snapshot of 5,000 calls (its WebSocket answered by Playwright, not the
    server) keeps a few dozen rows in the page and still finds any call."""
    trunk = {"id": 1, "name": "big", "customer_id": 1, "customer": "Acme", "status": "active",
             "max_channels": 6000, "max_cps": 100}  # fmt: skip
    calls = [
        {"call_id": f"c{i}", "edge": "edge-1", "trunk_id": 1, "customer_id": 1,
         "direction": "outbound", "caller": f"+1415{i:07d}", "callee": "+442071234567",
         "state": "answered", "setup_at": f"2026-12-04T20:{i // 600 % 60:02d}:00Z",
         "answer_at": None}
        for i in range(5000)
    ]  # fmt: skip
    snapshot = {"type": "snapshot", "me": {"staff": True}, "trunks": [trunk], "edges": [],
                "calls": calls}  # fmt: skip
    page = context.new_page()
    page.route_web_socket(re.compile(r"/ws/live/"), lambda ws: ws.send(json.dumps(snapshot)))
    page.goto(f"{url}/")
    sync_api.expect(page.locator("#t-active")).to_have_text("5000")
    sync_api.expect(page.locator(".trunk .g-value").first).to_have_text("5000 / 6000")
    rows = page.locator("#viewport .row")
    assert 0 < rows.count() <= 60, rows.count()  # virtualized: only what is visible
    page.locator("#viewport").evaluate("v => { v.scrollTop = v.scrollHeight; }")
    sync_api.expect(page.locator("#viewport .row", has_text="+14150004999")).to_have_count(1)
    page.fill("#f-search", "+14150001234")
    sync_api.expect(rows).to_have_count(1)
    sync_api.expect(page.locator("#shown")).to_have_text("1 of 5000 shown")
    page.close()
