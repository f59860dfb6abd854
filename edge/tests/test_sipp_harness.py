"""The SIPp harness and scenarios on their own: SIPp against SIPp, and against our digest code.

These pin down what test_edge_sipp.py relies on without the edge in between: each scenario pair
completes, the refusal scenario passes on the expected status only, statistics and message logs
are parsed, and SIPp's digest answers verify with `edge.sip.digest` (MD5; SIPp 3.6 has no
SHA-256). With TRUNKLINE_SIPP_KAMAILIO=1 and Kamailio installed, the scenarios also run through
a record-routing proxy (shared/peers); CI does not install Kamailio, so that part skips there.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.sip.digest import DigestServer, parse_authorization
from edge.sip.message import Request, make_response
from edge.sip.parser import parse_message
from edge.tests import sipp_harness as h

pytestmark = [pytest.mark.sipp]

CALLER = "+14155550100"
CALLEE = "+14155550199"


@pytest.fixture
def sipps(tmp_path: Path) -> Iterator[list[h.Sipp]]:
    h.require_sipp()
    started: list[h.Sipp] = []
    try:
        yield started
    finally:
        for sipp in started:
            print(sipp.result().explain())  # shown for a failed test only
            sipp.stop(grace=2)


def pair(
    workdir: Path,
    started: list[h.Sipp],
    uac: str,
    uas: str,
    *,
    uac_args: dict | None = None,
    uas_args: dict | None = None,
) -> tuple[h.SippResult, h.SippResult]:
    """Run scenario `uac` (at the PBX address) against `uas` (at the carrier address)."""
    callee = h.Sipp(
        workdir, "uas", scenario_file=h.scenario(uas), local_ip=h.CARRIER_IP, **(uas_args or {})
    )
    started.append(callee)
    callee.start().wait_listening()
    caller = h.Sipp(
        workdir,
        "uac",
        scenario_file=h.scenario(uac),
        local_ip=h.PBX_IP,
        remote=callee.address,
        keys={"caller": CALLER, "callee": CALLEE},
        **(uac_args or {}),
    )
    started.append(caller)
    return caller.run(), callee.wait(10)


def test_basic_call(tmp_path: Path, sipps: list[h.Sipp]) -> None:
    uac, uas = pair(
        tmp_path, sipps, "uac_basic.xml", "uas_basic.xml", uac_args={"duration_ms": 100}
    )
    assert uac.ok and uas.ok, uac.explain() + uas.explain()
    assert uac.successful == 1 and uac.failed == 0 and uas.successful == 1
    assert uac.stats is not None and uac.stats.outgoing == 1 and uas.stats.incoming == 1
    assert (uac.stats.response_time_ms() or 0) >= 0

    (invite,) = uas.received("INVITE")
    assert invite.first_line == f"INVITE sip:{CALLEE}@{h.CARRIER_IP}:{uas_port(uas)} SIP/2.0"
    assert invite.header("From").startswith(f"<sip:{CALLER}@{h.PBX_IP}:")
    assert "m=audio" in invite.text  # the body is kept
    assert [m.status for m in uac.messages if m.direction == "received"] == [100, 180, 200, 200]
    (bye,) = uas.received("BYE")
    assert bye.header("Call-ID") == invite.header("Call-ID")


def uas_port(result: h.SippResult) -> int:
    (invite,) = result.received("INVITE")
    return int(invite.first_line.split(":")[-1].split(" ")[0])


@pytest.mark.parametrize(
    ("uas", "expected", "ok"),
    [
        ("uas_busy.xml", "486", True),
        ("uas_unavailable.xml", "503", True),
        ("uas_busy.xml", "503", False),
    ],
)
def test_refusal_scenario_passes_on_the_expected_status_only(
    tmp_path: Path, sipps: list[h.Sipp], uas: str, expected: str, ok: bool
) -> None:
    uac, callee = pair(
        tmp_path,
        sipps,
        "uac_expect_refusal.xml",
        uas,
        uac_args={"variables": {"expected": expected}},
    )
    assert callee.ok, callee.explain()  # the refusal was ACKed
    assert uac.ok is ok, uac.explain()
    assert (uac.successful, uac.failed) == ((1, 0) if ok else (0, 1))


def test_cancel_scenarios(tmp_path: Path, sipps: list[h.Sipp]) -> None:
    uac, uas = pair(
        tmp_path, sipps, "uac_cancel.xml", "uas_ring_no_answer.xml", uac_args={"duration_ms": 200}
    )
    assert uac.ok and uas.ok, uac.explain() + uas.explain()
    assert [m.status for m in uac.messages if m.direction == "received"] == [100, 180, 200, 487]
    (cancel,) = uas.received("CANCEL")
    (invite,) = uas.received("INVITE")
    assert cancel.header("Via") == invite.header("Via")  # same transaction (RFC 3261 9.1)
    (ack,) = uas.received("ACK")
    assert ack.header("CSeq") == "1 ACK"


def test_callee_hangup_scenarios(tmp_path: Path, sipps: list[h.Sipp]) -> None:
    uac, uas = pair(
        tmp_path, sipps, "uac_wait_bye.xml", "uas_hangup.xml", uas_args={"duration_ms": 200}
    )
    assert uac.ok and uas.ok, uac.explain() + uas.explain()
    (bye,) = uac.received("BYE")
    (invite,) = uas.received("INVITE")
    # The callee's BYE reverses the INVITE's From and To, and targets the caller's Contact.
    assert bye.header("To") == invite.header("From")
    assert bye.header("From").startswith(invite.header("To"))
    assert bye.header("Call-ID") == invite.header("Call-ID")
    assert bye.first_line == f"BYE sip:{CALLER}@{h.PBX_IP}:{uac_port(uac)} SIP/2.0"


def uac_port(result: h.SippResult) -> int:
    invite = next(m for m in result.messages if m.method == "INVITE")
    return int(invite.header("Contact").rstrip(">").rsplit(":", 1)[1])


# --- digest: SIPp's answers against edge.sip.digest ------------------------------------------


class DigestChallenger:
    """A minimal UAS on a thread: 407 to an INVITE without Proxy-Authorization (challenges
    from `DigestServer`, algorithms in the given order), then 200 or 403 as `verify` says;
    200 to BYE. Records each verification's outcome."""

    def __init__(self, algorithms: tuple[str, ...], password: str = "secret") -> None:
        self.algorithms = algorithms
        self.password = password
        self.server = DigestServer(b"k" * 32, "trunkline")
        self.outcomes: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((h.EDGE_IP, 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def ha1(self, username: str, algorithm: str) -> str:
        text = f"{username}:trunkline:{self.password}".encode()
        return (hashlib.sha256 if algorithm == "SHA-256" else hashlib.md5)(text).hexdigest()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            message = parse_message(data)
            if not isinstance(message, Request) or message.method == "ACK":
                continue
            if message.method == "BYE":
                response = make_response(message, 200)
            elif (value := message.headers.get("Proxy-Authorization")) is None:
                headers = [
                    ("Proxy-Authenticate", challenge)
                    for challenge in self.server.challenge(time.time(), algorithms=self.algorithms)
                ]
                response = make_response(message, 407, to_tag="challenger", headers=headers)
            else:
                result = self.server.verify(
                    parse_authorization(value),
                    method="INVITE",
                    ha1_lookup=self.ha1,
                    now=time.time(),
                )
                self.outcomes.append(result.outcome.value)
                response = make_response(message, 200 if result.accepted else 403, to_tag="ok")
                if result.accepted:
                    response.headers.add("Contact", f"<sip:{h.EDGE_IP}:{self.port}>")
            self.sock.sendto(bytes(response), addr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def run_auth(
    workdir: Path, sipps: list[h.Sipp], scenario: str, challenger: DigestChallenger, **kwargs
) -> h.SippResult:
    caller = h.Sipp(
        workdir,
        "uac",
        scenario_file=h.scenario(scenario),
        local_ip=h.STRANGER_IP,
        remote=(h.EDGE_IP, challenger.port),
        keys={"caller": CALLER, "callee": CALLEE},
        **kwargs,
    )
    sipps.append(caller)
    return caller.run()


@pytest.mark.parametrize("algorithms", [("MD5",), ("MD5", "SHA-256")])
def test_sipp_digest_md5_verifies_with_edge_digest(
    tmp_path: Path, sipps: list[h.Sipp], algorithms: tuple[str, ...]
) -> None:
    challenger = DigestChallenger(algorithms)
    try:
        result = run_auth(
            tmp_path, sipps, "uac_auth.xml", challenger, auth=("pbx1", "secret"), duration_ms=50
        )
    finally:
        challenger.close()
    assert result.ok, result.explain()
    assert challenger.outcomes == ["ok"]


def test_sipp_digest_wrong_password_is_refused(tmp_path: Path, sipps: list[h.Sipp]) -> None:
    challenger = DigestChallenger(("MD5",))
    try:
        result = run_auth(
            tmp_path,
            sipps,
            "uac_auth_expect_refusal.xml",
            challenger,
            auth=("pbx1", "wrong"),
            variables={"expected": "403"},
        )
    finally:
        challenger.close()
    assert result.ok, result.explain()
    assert challenger.outcomes and challenger.outcomes[0] != "ok"


def test_sipp_cannot_answer_a_sha256_first_challenge(tmp_path: Path, sipps: list[h.Sipp]) -> None:
    """SIPp 3.6 reads only the first Proxy-Authenticate and knows MD5 (and AKAv1-MD5) only:
    with SHA-256 listed first (RFC 8760's order of preference) it gives up with a fatal error.
    If this starts failing, the installed SIPp learnt SHA-256 (upstream SIPp/sipp#676)."""
    challenger = DigestChallenger(("SHA-256", "MD5"))
    try:
        result = run_auth(
            tmp_path, sipps, "uac_auth.xml", challenger, auth=("pbx1", "secret"), wall_timeout=10
        )
    finally:
        challenger.close()
    assert not result.ok
    assert challenger.outcomes == []
    assert "MD5" in result.errors


# --- parsing helpers --------------------------------------------------------------------------


def test_parse_prometheus_and_metric_sums() -> None:
    text = (
        "# HELP trunkline_edge_refusals_total Refused calls\n"
        "# TYPE trunkline_edge_refusals_total counter\n"
        'trunkline_edge_refusals_total{reason="channel_limit"} 2\n'
        'trunkline_edge_refusals_total{reason="cps_limit",trunk="1"} 3\n'
        'trunkline_edge_active_calls{trunk="1"} 5\n'
        "trunkline_edge_up 1\n"
    )
    samples = h.parse_prometheus(text)
    assert samples[("trunkline_edge_up", frozenset())] == 1
    assert samples[("trunkline_edge_active_calls", frozenset({("trunk", "1")}))] == 5
    assert len(samples) == 4


def test_read_cdrs_skips_a_torn_last_line(tmp_path: Path) -> None:
    (tmp_path / "cdr-edge-20260101T000000-1.jsonl").write_text(
        '{"call_id": "a", "a_call_id": "x"}\n{"call_id": "b", "a_call_id": "y"}\n{"call_'
    )
    (tmp_path / "other.txt").write_text("{}\n")
    records = h.read_cdrs(tmp_path)
    assert [r["call_id"] for r in records] == ["a", "b"]
    assert h.cdrs_for(records, "y") == [{"call_id": "b", "a_call_id": "y"}]


def test_proc_net_address_matches_the_kernel_format() -> None:
    assert h._proc_net_address("127.0.0.2", 5060) == "0200007F:13C4"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((h.PBX_IP, 0))
        port = sock.getsockname()[1]
        assert h._udp_bound(h.PBX_IP, port)
        assert not h._udp_bound(h.CARRIER_IP, port)


def test_options_probe_takes_only_the_answer_to_its_own_request() -> None:
    """The probe's first OPTIONS goes unanswered; its answer comes late, just after the second
    OPTIONS, which itself is never answered: both count as unanswered (the late answer is not
    the second's). The third is answered."""
    edge = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    edge.bind((h.EDGE_IP, 0))
    edge.settimeout(10)
    probe = h.OptionsProbe(edge.getsockname(), every=0.001, timeout=0.5)

    def answer(data: bytes) -> bytes:
        request = parse_message(data)
        assert isinstance(request, Request)
        return bytes(make_response(request, 200))

    def far_end() -> None:
        first, source = edge.recvfrom(65535)
        edge.recvfrom(65535)  # the second OPTIONS: never answered
        edge.sendto(answer(first), source)
        third, _ = edge.recvfrom(65535)
        edge.sendto(answer(third), source)

    responder = threading.Thread(target=far_end, daemon=True)
    responder.start()
    probe.start()
    responder.join(10)
    deadline = time.monotonic() + 5
    while len(probe.samples) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    probe.stop()
    edge.close()
    delays = [delay for _, delay in probe.samples[:3]]
    assert delays[:2] == [0.5, 0.5]
    assert delays[2] != 0.5


# --- through a real proxy (opt-in) ------------------------------------------------------------


@pytest.fixture
def kamailio_wanted() -> None:
    if os.environ.get("TRUNKLINE_SIPP_KAMAILIO") != "1":
        pytest.skip("set TRUNKLINE_SIPP_KAMAILIO=1 to run the scenarios through Kamailio")
    if not h.kamailio_available():
        pytest.skip("kamailio or shared/peers/run-kamailio.sh is missing")


@pytest.mark.parametrize(
    ("uac", "uas", "uac_args", "uas_args"),
    [
        ("uac_basic.xml", "uas_basic.xml", {"duration_ms": 100}, {}),
        ("uac_cancel.xml", "uas_ring_no_answer.xml", {"duration_ms": 200}, {}),
        ("uac_wait_bye.xml", "uas_hangup.xml", {}, {"duration_ms": 200}),
        ("uac_expect_refusal.xml", "uas_busy.xml", {"variables": {"expected": "486"}}, {}),
    ],
)
def test_scenarios_through_kamailio(
    tmp_path: Path,
    sipps: list[h.Sipp],
    kamailio_wanted: None,
    uac: str,
    uas: str,
    uac_args: dict,
    uas_args: dict,
) -> None:
    """Record-routing proxy in the middle: in-dialog requests must follow Record-Route."""
    callee = h.Sipp(tmp_path, "uas", scenario_file=h.scenario(uas), local_ip=h.EDGE_IP, **uas_args)
    sipps.append(callee)
    proxy = h.Kamailio(tmp_path, callee.local_port)
    proxy.start()
    try:
        callee.start().wait_listening()
        caller = h.Sipp(
            tmp_path,
            "uac",
            scenario_file=h.scenario(uac),
            local_ip=h.PBX_IP,
            remote=proxy.sip_address,
            keys={"caller": CALLER, "callee": CALLEE},
            **uac_args,
        )
        sipps.append(caller)
        result, answered = caller.run(), callee.wait(10)
    finally:
        proxy.stop()
    assert result.ok and answered.ok, result.explain() + answered.explain()
    for message in answered.received("BYE") + result.received("BYE"):
        assert message.header("Route") is None  # Kamailio consumed its own Route entry
    if uac in ("uac_basic.xml", "uac_wait_bye.xml"):
        (ack,) = answered.received("ACK")
        assert ack.first_line.startswith(f"ACK sip:{h.EDGE_IP}:{callee.local_port}")
