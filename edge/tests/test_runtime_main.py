"""Start-up, shutdown and the command line of the edge: in-process runtimes and `python -m edge`.

The runtime runs the real B2BUA here: a snapshot from `factories`, SIP on real sockets, CDRs in a
real journal. The last test is the whole process: a call answered through the edge, SIGTERM,
refusal of new calls while draining, BYEs to both sides, one CDR, exit code 0.
"""

from __future__ import annotations

import asyncio
import functools
import http.server
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from edge.options import (
    ENVIRONMENT,
    EdgeOptions,
    UsageError,
    build_parser,
    host_port,
    options_from_namespace,
)
from edge.runtime.control import SNAPSHOT_FILE
from edge.runtime.events import BatchingSink
from edge.runtime.journal import journal_files, read_journal
from edge.runtime.main import EdgeRuntime, StartupError
from edge.sip.message import Request, Response, make_request, make_response, new_branch, new_tag
from edge.sip.parser import parse_message
from edge.tests.factories import NUMBER, gateway_doc, snapshot_doc

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-token"
SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)


def run_async(test):
    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        return asyncio.run(asyncio.wait_for(test(*args, **kwargs), 30))

    return wrapper


@pytest.fixture(autouse=True)
def _no_edge_environment(monkeypatch):
    for name in ENVIRONMENT.values():
        monkeypatch.delenv(name, raising=False)


def write_snapshot(path: Path, **kwargs) -> Path:
    path.write_bytes(orjson.dumps(snapshot_doc(**kwargs)))
    return path


def options(tmp_path: Path, **overrides) -> EdgeOptions:
    values = dict(
        node="edge-test",
        sip=("127.0.0.1", 0),
        control=("127.0.0.1", 0),
        token=TOKEN,
        journal_dir=tmp_path / "cdr",
        state_dir=tmp_path / "state",
        drain_timeout=0.2,
    )
    values.update(overrides)
    if "snapshot" not in values and "snapshot_url" not in values:
        values["snapshot"] = write_snapshot(tmp_path / "snapshot.json", version=5)
    return EdgeOptions(**values)


# --- SIP peers ------------------------------------------------------------------------------


class Peer:
    """A blocking UDP SIP peer."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(5)
        self.host, self.port = self.sock.getsockname()

    def send(self, message: Request | Response, to: tuple[str, int]) -> None:
        self.sock.sendto(message.to_bytes(), to)

    def receive(self) -> Request | Response:
        data, _ = self.sock.recvfrom(65535)
        return parse_message(data)

    def final(self) -> Response:
        """The next response that is not provisional (retransmissions of requests skipped)."""
        while True:
            message = self.receive()
            if isinstance(message, Response) and message.status >= 200:
                return message

    def request(self, method: str) -> Request:
        while True:
            message = self.receive()
            if isinstance(message, Request) and message.method == method:
                return message

    def invite(self, edge: tuple[str, int], callee: str = "+14155550123") -> Request:
        return make_request(
            "INVITE",
            f"sip:{callee}@{edge[0]}:{edge[1]}",
            from_=f"<sip:{NUMBER}@{self.host}>;tag={new_tag()}",
            to=f"<sip:{callee}@{edge[0]}>",
            call_id=f"{new_tag()}@{self.host}",
            cseq=1,
            via=f"SIP/2.0/UDP {self.host}:{self.port};branch={new_branch()}",
            contact=f"<sip:{NUMBER}@{self.host}:{self.port}>",
            body=SDP,
            content_type="application/sdp",
        )

    def options(self, edge: tuple[str, int]) -> Request:
        return make_request(
            "OPTIONS",
            f"sip:{edge[0]}:{edge[1]}",
            from_=f"<sip:probe@{self.host}>;tag={new_tag()}",
            to=f"<sip:{edge[0]}>",
            call_id=new_tag(),
            cseq=1,
            via=f"SIP/2.0/UDP {self.host}:{self.port};branch={new_branch()}",
        )

    def close(self) -> None:
        self.sock.close()


def ack_for(invite: Request, ok: Response, peer: Peer) -> Request:
    return make_request(
        "ACK",
        ok.contact[0].uri,
        from_=invite.headers.get("From"),
        to=ok.headers.get("To"),
        call_id=invite.call_id,
        cseq=1,
        via=f"SIP/2.0/UDP {peer.host}:{peer.port};branch={new_branch()}",
    )


def fetch(method: str, url: str, token: str | None = TOKEN) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


# --- options --------------------------------------------------------------------------------


def test_options_come_from_the_environment_and_the_command_line_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGE_NODE_NAME", "edge-env")
    monkeypatch.setenv("EDGE_SIP_ADDRESS", "0.0.0.0:5070")
    monkeypatch.setenv("EDGE_CONTROL_TOKEN", "from-env")
    monkeypatch.setenv("EDGE_SNAPSHOT_URL", "http://cp.test/internal/edge/snapshot")
    monkeypatch.setenv("EDGE_JOURNAL_DIR", str(tmp_path))
    parsed = options_from_namespace(build_parser().parse_args(["--node", "edge-cli"]))
    assert parsed.node == "edge-cli"
    assert parsed.sip == ("0.0.0.0", 5070)
    assert parsed.control == ("127.0.0.1", 8081)
    assert parsed.token == "from-env"
    assert parsed.snapshot_url == "http://cp.test/internal/edge/snapshot"
    assert parsed.journal_dir == tmp_path
    assert parsed.drain_timeout == 30.0 and parsed.state_dir is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--snapshot", "s.json", "--journal-dir", "j", "--token", "t"], "EDGE_NODE_NAME"),
        (["--node", "n", "--snapshot", "s", "--journal-dir", "j"], "EDGE_CONTROL_TOKEN"),
        (["--node", "n", "--token", "t", "--journal-dir", "j"], "--snapshot FILE or"),
        (["--node", "n", "--token", "t", "--snapshot", "s"], "--journal-dir"),
        (["--node", "n", "--token", "t", "--snapshot", "s", "--journal-dir", "j",
          "--tls", "127.0.0.1:5061"], "--tls needs --cert and --key"),
        (["--node", "n", "--token", "t", "--snapshot", "s", "--journal-dir", "j",
          "--sip", "5060"], "expected HOST:PORT"),
        (["--node", "n", "--token", "t", "--snapshot", "s", "--journal-dir", "j",
          "--drain-timeout", "soon"], "not a number"),
    ],
)  # fmt: skip
def test_incomplete_options_say_what_is_missing(argv, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        options_from_namespace(build_parser().parse_args(argv))


def test_host_port():
    assert host_port("[::1]:5060", "x") == ("::1", 5060)
    assert host_port(":5060", "x") == ("0.0.0.0", 5060)
    with pytest.raises(UsageError):
        host_port("host:99999", "x")


# --- the runtime in-process -----------------------------------------------------------------


@run_async
async def test_runtime_serves_sip_and_control_then_stops_with_its_cdrs(tmp_path):
    runtime = EdgeRuntime(options(tmp_path))
    await runtime.start()
    line = runtime.ready_line()
    assert line.startswith("edge ready node=edge-test sip=127.0.0.1:")
    assert line.endswith(f"tls=- control=127.0.0.1:{runtime.control_address[1]} config_version=5")
    sip = runtime.sip_address
    peer = Peer()

    def talk():
        peer.send(peer.options(sip), sip)
        ok = peer.final()
        peer.send(peer.invite(sip, callee="+19005550100"), sip)  # a blocked prefix
        refused = peer.final()
        tcp = socket.create_connection(sip, timeout=5)
        tcp.sendall(peer.options(sip).to_bytes().replace(b"/UDP", b"/TCP"))
        over_tcp = parse_message(tcp.recv(65535))
        tcp.close()
        health = fetch("GET", f"http://127.0.0.1:{runtime.control_address[1]}/health")
        return ok.status, refused.status, over_tcp.status, health

    ok, refused, over_tcp, (status, body) = await asyncio.to_thread(talk)
    assert (ok, refused, over_tcp) == (200, 403, 200)
    assert status == 200 and orjson.loads(body)["config_version"] == 5
    runtime.stop()
    await runtime.run_until_stopped()
    (journal,) = journal_files(tmp_path / "cdr")
    ((_, record),) = list(read_journal(journal))
    assert (record.reason, record.final_code) == ("destination_blocked", 403)
    assert (tmp_path / "state" / SNAPSHOT_FILE).exists()
    assert (tmp_path / "state" / "digest-secret").stat().st_mode & 0o077 == 0
    # Every socket is released.
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as probe:
            probe.bind(sip)
    peer.close()


@run_async
async def test_call_events_reach_a_batching_sink_and_the_cdr_the_journal(tmp_path):
    gateway = Peer("127.1.0.1")
    caller = Peer()
    snapshot = write_snapshot(tmp_path / "s.json", gateways=[gateway_doc(port=gateway.port)])
    batches: list[bytes] = []
    sink = BatchingSink(batches.append, node="edge-test", interval=0.01)  # loop taken lazily
    runtime = EdgeRuntime(options(tmp_path, snapshot=snapshot), events=sink)
    await runtime.start()
    sip = runtime.sip_address

    def busy_call() -> int:
        caller.send(caller.invite(sip), sip)
        b_invite = gateway.request("INVITE")
        gateway.send(make_response(b_invite, 486, to_tag="gw"), sip)
        gateway.request("ACK")
        return caller.final().status

    assert await asyncio.to_thread(busy_call) == 486
    await asyncio.sleep(0.05)
    node_event, *events = [e for batch in batches for e in orjson.loads(batch)["events"]]
    assert node_event["kind"] == "node_started" and node_event["config_version"] >= 1
    assert [e["kind"] for e in events] == ["started", "ended"]
    assert events[1]["final_code"] == 486
    # An attempt refused before it became a call (invalid_number) is a "refused" event.
    caller.send(caller.invite(sip, callee="not-a-number"), sip)
    assert (await asyncio.to_thread(caller.final)).status == 484
    await asyncio.sleep(0.05)
    refused = orjson.loads(batches[-1])["events"][-1]
    assert refused["kind"] == "refused" and refused["reason"] == "invalid_number"
    assert refused["final_code"] == 484 and refused["call_id"] not in {e["call_id"] for e in events}
    # A config applied is news too: the board re-reads the edge's calls on it.
    assert runtime.core is not None
    runtime.apply_config(runtime.core.config)
    await asyncio.sleep(0.05)
    last = orjson.loads(batches[-1])["events"][-1]
    assert last["kind"] == "config_applied"
    runtime.stop()
    await runtime.run_until_stopped()
    (journal,) = journal_files(tmp_path / "cdr")
    busy, invalid = (record for _, record in read_journal(journal))
    assert busy.call_id == events[0]["call_id"] and busy.final_code == 486
    assert invalid.call_id == refused["call_id"]  # the refused event names its CDR
    caller.close()
    gateway.close()


class SnapshotHandler(http.server.BaseHTTPRequestHandler):
    body = b""
    seen: list[tuple[str | None, str | None]] = []

    def do_GET(self):
        self.seen.append((self.headers.get("Authorization"), self.headers.get("X-Edge-Node")))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@run_async
async def test_snapshot_from_the_url_is_used_and_saved(tmp_path):
    SnapshotHandler.body = orjson.dumps(snapshot_doc(version=11))
    SnapshotHandler.seen = []
    server = http.server.HTTPServer(("127.0.0.1", 0), SnapshotHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/internal/edge/snapshot"
    runtime = EdgeRuntime(options(tmp_path, snapshot_url=url))
    await runtime.start()
    assert runtime.core.config.version == 11
    assert SnapshotHandler.seen == [(f"Bearer {TOKEN}", "edge-test")]
    assert (tmp_path / "state" / SNAPSHOT_FILE).read_bytes() == SnapshotHandler.body
    runtime.stop()
    await runtime.run_until_stopped()
    server.shutdown()


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/internal/edge/snapshot"


@run_async
async def test_unreachable_url_falls_back_to_the_saved_snapshot(tmp_path, caplog):
    (tmp_path / "state").mkdir()
    write_snapshot(tmp_path / "state" / SNAPSHOT_FILE, version=8)
    runtime = EdgeRuntime(options(tmp_path, snapshot_url=_dead_url()))
    with caplog.at_level(logging.WARNING):
        await runtime.start()
    assert runtime.core.config.version == 8
    assert "falling back to the saved snapshot" in caplog.text
    runtime.stop()
    await runtime.run_until_stopped()


@run_async
async def test_no_snapshot_anywhere_refuses_to_start(tmp_path):
    runtime = EdgeRuntime(options(tmp_path, snapshot_url=_dead_url()))
    with pytest.raises(StartupError, match="no config snapshot, refusing to start"):
        await runtime.start()
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"{}")
    with pytest.raises(StartupError, match=r"snapshot file .*bad\.json"):
        await EdgeRuntime(options(tmp_path, snapshot=bad)).start()


@run_async
async def test_a_port_in_use_is_a_clear_start_up_error(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        runtime = EdgeRuntime(options(tmp_path, sip=taken.getsockname()))
        with pytest.raises(StartupError, match=r"cannot bind SIP on 127\.0\.0\.1"):
            await runtime.start()


@run_async
async def test_gateways_given_by_name_are_resolved_into_carrier_sources(tmp_path):
    snapshot = write_snapshot(
        tmp_path / "snapshot.json", gateways=[gateway_doc(host="localhost", port=5080)]
    )
    runtime = EdgeRuntime(options(tmp_path, snapshot=snapshot))
    await runtime.start()
    for _ in range(100):
        if runtime.core.config.is_carrier_source("127.0.0.1"):
            break
        await asyncio.sleep(0.02)
    assert runtime.core.config.is_carrier_source("127.0.0.1")
    assert runtime.core.config.version == 1
    runtime.stop()
    await runtime.run_until_stopped()


@pytest.fixture
def certificate(tmp_path):
    """A self-signed certificate for 127.0.0.1 (made with the openssl command)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@run_async
async def test_sip_over_tls(tmp_path, certificate):
    cert, key = certificate
    runtime = EdgeRuntime(options(tmp_path, tls=("127.0.0.1", 0), cert=cert, key=key))
    await runtime.start()
    assert runtime.core.local["tls"] == ("127.0.0.1", runtime.tls_address[1], "tls")
    assert f"tls=127.0.0.1:{runtime.tls_address[1]}" in runtime.ready_line()

    def talk() -> int:
        context = ssl.create_default_context(cafile=str(cert))
        peer = Peer()  # only builds the request
        request = peer.options(runtime.tls_address).to_bytes()
        peer.close()
        with (
            socket.create_connection(runtime.tls_address, timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(request.replace(b"SIP/2.0/UDP", b"SIP/2.0/TLS"))
            return parse_message(tls.recv(65535)).status

    assert await asyncio.to_thread(talk) == 200
    runtime.stop()
    await runtime.run_until_stopped()


# --- the process ----------------------------------------------------------------------------


def test_python_m_edge_drains_on_sigterm_with_a_call_up(tmp_path):
    gateway = Peer("127.1.0.1")  # outside trunk 1's 127.0.0.1/32, so it is a carrier
    caller = Peer("127.0.0.1")
    snapshot = write_snapshot(
        tmp_path / "snapshot.json", version=7, gateways=[gateway_doc(port=gateway.port)]
    )
    env = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT.values()}
    env["PYTHONPATH"] = str(ROOT)
    process = subprocess.Popen(
        [sys.executable, "-m", "edge", "--node", "edge-proc", "--sip", "127.0.0.1:0",
         "--control", "127.0.0.1:0", "--token", TOKEN, "--snapshot", str(snapshot),
         "--journal-dir", str(tmp_path / "cdr"), "--state-dir", str(tmp_path / "state"),
         "--drain-timeout", "1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        ready = process.stdout.readline()
        assert "edge ready" in ready, process.stderr.read()
        fields = dict(part.split("=", 1) for part in ready.split()[2:])
        host, port = fields["sip"].rsplit(":", 1)
        edge = (host, int(port))
        control = "http://" + fields["control"]
        assert fields["config_version"] == "7"

        a_invite = caller.invite(edge)
        caller.send(a_invite, edge)
        b_invite = gateway.request("INVITE")
        b_ok = make_response(
            b_invite,
            200,
            to_tag="gw",
            headers=[
                ("Contact", f"<sip:gw@{gateway.host}:{gateway.port}>"),
                ("Content-Type", "application/sdp"),
            ],
            body=SDP,
        )
        gateway.send(b_ok, edge)
        a_ok = caller.final()
        assert a_ok.status == 200
        caller.send(ack_for(a_invite, a_ok, caller), edge)
        assert gateway.request("ACK").call_id == b_invite.call_id
        status, body = fetch("GET", control + "/calls")
        assert status == 200 and len(orjson.loads(body)["calls"]) == 1

        process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        assert orjson.loads(fetch("GET", control + "/health", token=None)[1]) == {
            "status": "draining"
        }
        late = Peer("127.0.0.1")
        late.send(late.invite(edge), edge)
        assert late.final().status == 503  # no new calls while draining
        late.close()
        # The drain timeout passes with the call still up: the edge ends it on both sides.
        assert caller.request("BYE").call_id == a_invite.call_id
        assert gateway.request("BYE").call_id == b_invite.call_id
        assert process.wait(timeout=15) == 0
        stdout = ready + process.stdout.read()
        assert stdout.count("edge ready") == 1
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()
        caller.close()
        gateway.close()
    records = [
        record for path in journal_files(tmp_path / "cdr") for _, record in read_journal(path)
    ]
    by_reason = sorted((r.reason, r.final_code, r.answer_at is not None) for r in records)
    assert by_reason == [("draining", 503, False), ("shutdown", 200, True)]


def test_manage_py_runedge_takes_its_defaults_from_settings_and_stops_on_sigterm(tmp_path):
    snapshot = write_snapshot(tmp_path / "snapshot.json", version=2)
    env = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT.values()}
    env.update(
        DEBUG="1",  # a development SECRET_KEY, whatever .env says
        TRUNKLINE_VAR_DIR=str(tmp_path / "var"),
        EDGE_NODE_NAME="edge-django",
        EDGE_SIP_ADDRESS="127.0.0.1:0",
        EDGE_CONTROL_ADDRESS="127.0.0.1:0",
        EDGE_CONTROL_TOKEN=TOKEN,
    )
    process = subprocess.Popen(
        [sys.executable, "manage.py", "runedge", "--snapshot", str(snapshot)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        ready = process.stdout.readline()
        assert "edge ready node=edge-django" in ready, process.stderr.read()
        control = "http://" + dict(p.split("=", 1) for p in ready.split()[2:])["control"]
        status, body = fetch("GET", control + "/health")
        assert (status, orjson.loads(body)["config_version"]) == (200, 2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()
    # Journal and state under VAR_DIR, as the settings say.
    assert (tmp_path / "var" / "cdr").is_dir()
    assert (tmp_path / "var" / "edge" / SNAPSHOT_FILE).read_bytes() == snapshot.read_bytes()
