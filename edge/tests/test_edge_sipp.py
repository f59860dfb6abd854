"""The edge process against real SIP peers: SIPp callers and callees on loopback.

Each test starts ``python -m edge`` on its own snapshot, ports and journal directory, runs SIPp
scenarios from edge/tests/sipp/ through it, and then checks three things: what the SIPp peers
saw (exit status, statistics, the messages they logged), what the control API said, and the
CDR journal — exactly one record per call attempt, with the expected reason, final code,
direction and trunk. The edge is stopped with SIGTERM before the final CDR check, so every
record is flushed and the count is exact (and the edge must exit 0 doing so).

Roles by address (see sipp_harness): the edge on 127.0.0.1, the customer PBX on 127.0.0.2 (the
trunk's ACL and its origination URIs), the carrier gateway on 127.0.0.3, a stranger on
127.0.0.9. Numbers: the customer owns DID +14155550100 (also its outbound caller-ID, the
trunk's policy being "customer_numbers"); outbound calls dial +14155550199; the carrier's
caller is +12125550123.

Needs the ``sipp`` binary (Debian package sip-tester; .ci/run installs it); skipped without.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from edge.runtime import allocator
from edge.tests import sipp_harness as h
from edge.tests.factories import gateway_doc, origination_doc, snapshot_doc, trunk_doc

pytestmark = [pytest.mark.sipp]

DID = "+14155550100"  # the customer's number: inbound DID and outbound caller-ID
DIALLED = "+14155550199"  # what the PBX dials out
CARRIER_CALLER = "+12125550123"  # who calls the DID through the carrier
PASSWORD = "secret"  # factories' default password of credential "pbx1" (trunk 1)
USERNAME = "pbx1"
TRUNK = 1
CUSTOMER = 1
GATEWAY_ID = 1


# --- fixtures and helpers --------------------------------------------------------------------


class Lab:
    """The processes of one test; all of them are stopped at teardown, whatever happened."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.sipps: list[h.Sipp] = []
        self.edges: list[h.EdgeProcess] = []

    def edge(self, snapshot: Mapping[str, Any], **kwargs: Any) -> h.EdgeProcess:
        kwargs.setdefault("drain_timeout", 10)
        edge = h.EdgeProcess(self.workdir / f"edge{len(self.edges)}", snapshot, **kwargs)
        self.edges.append(edge)
        return edge.start()

    def sipp(self, scenario: str, name: str, **kwargs: Any) -> h.Sipp:
        sipp = h.Sipp(self.workdir, name, scenario_file=h.scenario(scenario), **kwargs)
        self.sipps.append(sipp)
        return sipp

    def uas(self, scenario: str, name: str, ip: str, **kwargs: Any) -> h.Sipp:
        """A callee on its own port (``calls=None``: it answers until stopped). Not started:
        its port goes into the snapshot first; then ``start().wait_listening()``."""
        return self.sipp(scenario, name, local_ip=ip, **kwargs)

    def uac(
        self,
        scenario: str,
        name: str,
        ip: str,
        edge: h.EdgeProcess,
        *,
        caller: str,
        callee: str,
        **kwargs: Any,
    ) -> h.Sipp:
        keys = {"caller": caller, "callee": callee, **kwargs.pop("keys", {})}
        return self.sipp(scenario, name, local_ip=ip, remote=edge.sip_address, keys=keys, **kwargs)

    def report(self) -> str:
        parts = [sipp.result().explain() for sipp in self.sipps]
        parts += [edge.explain() for edge in self.edges]
        return "\n\n".join(parts)

    def close(self) -> None:
        for sipp in self.sipps:
            sipp.stop(grace=2)
        for edge in self.edges:
            edge.stop(grace=5)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    h.require_sipp()
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        # Printed at teardown: pytest shows it only for a failed test.
        print(lab.report())
        lab.close()


def lab_snapshot(
    *,
    origination: Sequence[tuple[str, int]] = (),
    gateway_port: int = 5060,
    **trunk_overrides: Any,
) -> dict[str, Any]:
    """Customer 1, trunk 1 (ACL: the PBX address; credential pbx1/secret), DID +14155550100 on
    trunk 1, one carrier gateway at the carrier address. `origination` is (uri, priority)."""
    trunk = trunk_doc(
        id=TRUNK,
        customer=CUSTOMER,
        acl=[f"{h.PBX_IP}/32"],
        origination_uris=[origination_doc(uri, priority=prio) for uri, prio in origination],
        **trunk_overrides,
    )
    return snapshot_doc(
        trunks=[trunk],
        numbers=[[DID, CUSTOMER, TRUNK]],
        gateways=[gateway_doc(id=GATEWAY_ID, host=h.CARRIER_IP, port=gateway_port, prefixes=[])],
    )


def sent_call_ids(result: h.SippResult) -> list[str]:
    """The Call-IDs of the INVITEs a SIPp UAC sent (first sending of each call)."""
    seen: list[str] = []
    for message in result.messages:
        if message.direction == "sent" and message.method == "INVITE":
            call_id = message.header("Call-ID")
            if call_id and call_id not in seen:
                seen.append(call_id)
    return seen


def final_cdrs(edge: h.EdgeProcess, expected: int) -> list[dict[str, Any]]:
    """Wait for `expected` records, stop the edge (SIGTERM: it must exit 0, flushing its
    journal), and return every record: the count is then exact."""
    edge.wait_for_cdrs(expected)
    code = edge.stop(grace=10)
    assert code == 0, f"the edge exited {code} on SIGTERM\n{edge.explain()}"
    records = edge.cdrs()
    assert len(records) == expected, f"expected {expected} CDRs, got {records!r}"
    return records


def one_cdr(records: list[dict[str, Any]], a_call_id: str, **expected: Any) -> dict[str, Any]:
    """The single record of the attempt whose caller-side Call-ID is `a_call_id`, checked."""
    matching = h.cdrs_for(records, a_call_id)
    assert len(matching) == 1, f"expected one CDR for {a_call_id}, got {matching!r} in {records!r}"
    record = dict(matching[0])
    wrong = {
        key: (record.get(key), value) for key, value in expected.items() if record.get(key) != value
    }
    assert not wrong, f"CDR fields (got, expected): {wrong}\n{record!r}"
    return record


def assert_ok(*results: h.SippResult) -> None:
    for result in results:
        assert result.ok, result.explain()


def assert_answered_cdr(record: Mapping[str, Any]) -> None:
    """Fields every answered call has, whatever its direction."""
    assert record["answer_at"] is not None and record["setup_at"] is not None
    assert record["end_at"] is not None
    assert record["duration_ms"] >= 0
    assert record["b_call_id"] and record["b_call_id"] != record["a_call_id"]
    assert record["answered_by"]
    assert record["routes"] and record["routes"][-1]["status"] == 200


# --- calls that are answered ------------------------------------------------------------------


def test_inbound_call_reaches_the_numbers_origination_uri(lab: Lab) -> None:
    pbx = lab.uas("uas_basic.xml", "pbx", h.PBX_IP)
    edge = lab.edge(lab_snapshot(origination=[(pbx.uri, 10)]))
    pbx.start().wait_listening()

    carrier = lab.uac(
        "uac_basic.xml",
        "carrier",
        h.CARRIER_IP,
        edge,
        caller=CARRIER_CALLER,
        callee=DID,
        duration_ms=300,
    ).run()
    callee = pbx.wait(10)
    assert_ok(carrier, callee)

    # B2BUA: the PBX sees the edge, never the carrier (SDP aside: media goes end to end).
    (invite,) = callee.received("INVITE")
    (a_call_id,) = sent_call_ids(carrier)
    assert invite.header("Call-ID") != a_call_id
    assert h.CARRIER_IP not in invite.head, invite.head
    assert DID.lstrip("+") in invite.first_line

    record = one_cdr(
        final_cdrs(edge, 1),
        a_call_id,
        direction="inbound",
        trunk_id=TRUNK,
        customer_id=CUSTOMER,
        callee_e164=DID,
        caller_e164=CARRIER_CALLER,
        source_ip=h.CARRIER_IP,
        final_code=200,
        reason="normal_clearing",
        hangup_side="caller",
        answered_by=pbx.uri,
    )
    assert_answered_cdr(record)
    assert record["b_call_id"] == invite.header("Call-ID")
    assert [r["target"] for r in record["routes"]] == [pbx.uri]
    assert record["duration_ms"] >= 250
    assert "PCMU" in record["codecs"]


def test_outbound_call_from_an_acl_trunk_reaches_the_carrier(lab: Lab) -> None:
    gateway = lab.uas("uas_basic.xml", "gateway", h.CARRIER_IP)
    edge = lab.edge(lab_snapshot(gateway_port=gateway.local_port))
    gateway.start().wait_listening()

    pbx = lab.uac(
        "uac_basic.xml", "pbx", h.PBX_IP, edge, caller=DID, callee=DIALLED, duration_ms=300
    ).run()
    carrier = gateway.wait(10)
    assert_ok(pbx, carrier)

    (invite,) = carrier.received("INVITE")
    (a_call_id,) = sent_call_ids(pbx)
    assert invite.header("Call-ID") != a_call_id
    assert h.PBX_IP not in invite.head, invite.head

    record = one_cdr(
        final_cdrs(edge, 1),
        a_call_id,
        direction="outbound",
        trunk_id=TRUNK,
        customer_id=CUSTOMER,
        caller_e164=DID,
        callee_e164=DIALLED,
        source_ip=h.PBX_IP,
        final_code=200,
        reason="normal_clearing",
        hangup_side="caller",
    )
    assert_answered_cdr(record)
    # A gateway is recorded by its id (a URI only for origination URIs).
    assert record["answered_by"] == str(GATEWAY_ID)
    assert [(r["target"], r["status"]) for r in record["routes"]] == [(str(GATEWAY_ID), 200)]


# `manage.py runedge` in place of `python -m edge`: its defaults come from edge/options.py too.
RUNEDGE = [sys.executable, "manage.py", "runedge"]


@pytest.mark.parametrize("launcher", [None, RUNEDGE], ids=["python-m-edge", "runedge"])
def test_digest_authenticated_outbound_call(lab: Lab, tmp_path: Path, launcher) -> None:
    """A caller outside every ACL proves trunk 1's credential (407, then INVITE with
    Proxy-Authorization). SIPp 3.6 answers MD5 only and reads only the first
    Proxy-Authenticate, as many deployed PBXs do: the default challenge order
    (EDGE_DIGEST_ALGORITHMS, edge/options.py) offers MD5 first, so it authenticates against an
    edge started with no digest option at all, by `python -m edge` or by `manage.py runedge`."""
    gateway = lab.uas("uas_basic.xml", "gateway", h.CARRIER_IP)
    env = {  # runedge: no database to find a node in, no Redis: the edge's own defaults
        "DEBUG": "1",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'none.sqlite3'}",
        "REDIS_URL": "",
        "TRUNKLINE_VAR_DIR": str(tmp_path / "var"),
    }
    edge = lab.edge(
        lab_snapshot(gateway_port=gateway.local_port),
        launcher=launcher,
        env=env if launcher else None,
    )
    # Either entry point re-executed itself on its default allocator (edge/runtime/allocator.py):
    # jemalloc, which .ci/run installs; glibc's malloc where it is not installed.
    assert edge.health()["allocator"] == ("jemalloc" if allocator._jemalloc_library() else "malloc")
    gateway.start().wait_listening()

    caller = lab.uac(
        "uac_auth.xml",
        "stranger",
        h.STRANGER_IP,
        edge,
        caller=DID,
        callee=DIALLED,
        duration_ms=200,
        auth=(USERNAME, PASSWORD),
    ).run()
    carrier = gateway.wait(10)
    assert_ok(caller, carrier)
    (challenge,) = caller.received(407)
    assert challenge.header("Proxy-Authenticate")

    (a_call_id,) = sent_call_ids(caller)  # the challenged INVITE and its retry share it
    record = one_cdr(
        final_cdrs(edge, 1),
        a_call_id,
        direction="outbound",
        trunk_id=TRUNK,
        customer_id=CUSTOMER,
        source_ip=h.STRANGER_IP,
        final_code=200,
        reason="normal_clearing",
    )
    assert_answered_cdr(record)


# --- routing: failover or not -----------------------------------------------------------------


def test_inbound_fails_over_from_503_to_the_next_origination_uri(lab: Lab) -> None:
    first = lab.uas("uas_unavailable.xml", "pbx-503", h.PBX_IP)
    second = lab.uas("uas_basic.xml", "pbx-ok", h.PBX_IP)
    edge = lab.edge(lab_snapshot(origination=[(first.uri, 10), (second.uri, 20)]))
    first.start().wait_listening()
    second.start().wait_listening()

    carrier = lab.uac(
        "uac_basic.xml",
        "carrier",
        h.CARRIER_IP,
        edge,
        caller=CARRIER_CALLER,
        callee=DID,
        duration_ms=200,
    ).run()
    assert_ok(carrier, first.wait(10), second.wait(10))

    (a_call_id,) = sent_call_ids(carrier)
    record = one_cdr(
        final_cdrs(edge, 1),
        a_call_id,
        direction="inbound",
        trunk_id=TRUNK,
        final_code=200,
        reason="normal_clearing",
        answered_by=second.uri,
    )
    assert [(r["target"], r["status"]) for r in record["routes"]] == [
        (first.uri, 503),
        (second.uri, 200),
    ]


def test_inbound_does_not_fail_over_on_486(lab: Lab) -> None:
    busy = lab.uas("uas_busy.xml", "pbx-486", h.PBX_IP)
    spare = lab.uas("uas_basic.xml", "pbx-spare", h.PBX_IP)
    edge = lab.edge(lab_snapshot(origination=[(busy.uri, 10), (spare.uri, 20)]))
    busy.start().wait_listening()
    spare.start().wait_listening()

    carrier = lab.uac(
        "uac_expect_refusal.xml",
        "carrier",
        h.CARRIER_IP,
        edge,
        caller=CARRIER_CALLER,
        callee=DID,
        variables={"expected": "486"},
    ).run()
    assert_ok(carrier, busy.wait(10))
    time.sleep(0.3)  # a wrong failover would reach the spare now
    untouched = spare.stop()
    assert untouched.stats is not None and untouched.stats.incoming == 0, untouched.explain()
    assert not untouched.received("INVITE")

    (a_call_id,) = sent_call_ids(carrier)
    record = one_cdr(
        final_cdrs(edge, 1),
        a_call_id,
        direction="inbound",
        trunk_id=TRUNK,
        final_code=486,
        reason="callee_rejected",
        answer_at=None,
        hangup_side="callee",
    )
    assert [(r["target"], r["status"]) for r in record["routes"]] == [(busy.uri, 486)]


# --- how calls end ----------------------------------------------------------------------------


def test_caller_cancels_before_answer(lab: Lab) -> None:
    gateway = lab.uas("uas_ring_no_answer.xml", "gateway", h.CARRIER_IP)
    edge = lab.edge(lab_snapshot(gateway_port=gateway.local_port))
    gateway.start().wait_listening()

    pbx = lab.uac(
        "uac_cancel.xml", "pbx", h.PBX_IP, edge, caller=DID, callee=DIALLED, duration_ms=300
    ).run()
    carrier = gateway.wait(10)
    assert_ok(pbx, carrier)  # the caller got 200 (CANCEL) and 487; the callee got a CANCEL

    (a_call_id,) = sent_call_ids(pbx)
    record = one_cdr(
        final_cdrs(edge, 1),
        a_call_id,
        direction="outbound",
        trunk_id=TRUNK,
        final_code=487,
        reason="cancelled",
        hangup_side="caller",
        answer_at=None,
        answered_by=None,
        duration_ms=0,
    )
    assert record["ringing_at"] is not None


def test_callee_hangs_up(lab: Lab) -> None:
    pbx = lab.uas("uas_hangup.xml", "pbx", h.PBX_IP, duration_ms=300)
    edge = lab.edge(lab_snapshot(origination=[(pbx.uri, 10)]))
    pbx.start().wait_listening()

    carrier = lab.uac(
        "uac_wait_bye.xml", "carrier", h.CARRIER_IP, edge, caller=CARRIER_CALLER, callee=DID
    ).run()
    assert_ok(carrier, pbx.wait(10))

    (a_call_id,) = sent_call_ids(carrier)
    record = one_cdr(
        final_cdrs(edge, 1),
        a_call_id,
        direction="inbound",
        trunk_id=TRUNK,
        final_code=200,
        reason="normal_clearing",
        hangup_side="callee",
    )
    assert_answered_cdr(record)


def test_operator_hangs_up_through_the_control_api(lab: Lab) -> None:
    gateway = lab.uas("uas_basic.xml", "gateway", h.CARRIER_IP)
    edge = lab.edge(lab_snapshot(gateway_port=gateway.local_port))
    gateway.start().wait_listening()

    pbx = lab.uac("uac_wait_bye.xml", "pbx", h.PBX_IP, edge, caller=DID, callee=DIALLED).start()
    (call,) = edge.wait_active_calls(1)
    assert call["trunk_id"] in (TRUNK, str(TRUNK)) and call["direction"] == "outbound"
    assert edge.hang_up(call["call_id"]) in (200, 202, 204)
    assert_ok(pbx.wait(10), gateway.wait(10))  # BYE to both legs, both answered 200

    (a_call_id,) = sent_call_ids(pbx.result())
    one_cdr(
        final_cdrs(edge, 1),
        a_call_id,
        direction="outbound",
        trunk_id=TRUNK,
        reason="operator_hangup",
        hangup_side="edge",
    )


# --- policy: limits and refusals --------------------------------------------------------------


def test_channel_limit_refuses_calls_beyond_max_channels(lab: Lab) -> None:
    gateway = lab.uas("uas_basic.xml", "gateway", h.CARRIER_IP, calls=2)
    edge = lab.edge(lab_snapshot(gateway_port=gateway.local_port, max_channels=2, max_cps=100))
    gateway.start().wait_listening()

    long_calls = lab.uac(
        "uac_basic.xml",
        "pbx-long",
        h.PBX_IP,
        edge,
        caller=DID,
        callee=DIALLED,
        calls=2,
        rate=20,
        limit=2,
        duration_ms=2500,
    ).start()
    active = edge.wait_active_calls(2)
    assert {str(call["trunk_id"]) for call in active} == {str(TRUNK)}
    assert edge.metric("trunkline_edge_active_calls", trunk=str(TRUNK)) == 2

    extra = lab.uac(
        "uac_expect_refusal.xml",
        "pbx-extra",
        h.PBX_IP,
        edge,
        caller=DID,
        callee=DIALLED,
        calls=2,
        rate=20,
        variables={"expected": "503"},
    ).run()
    assert_ok(extra)
    assert extra.successful == 2
    assert edge.metric("trunkline_edge_refusals_total", reason="channel_limit") == 2
    answered = long_calls.wait(10)
    assert_ok(answered, gateway.wait(10))
    assert answered.successful == 2

    records = final_cdrs(edge, 4)
    for a_call_id in sent_call_ids(answered):
        one_cdr(records, a_call_id, reason="normal_clearing", final_code=200, trunk_id=TRUNK)
    for a_call_id in sent_call_ids(extra):
        one_cdr(
            records,
            a_call_id,
            reason="channel_limit",
            final_code=503,
            trunk_id=TRUNK,
            direction="outbound",
            customer_id=CUSTOMER,
            answer_at=None,
            routes=[],
        )


def test_cps_limit_refuses_a_burst(lab: Lab) -> None:
    gateway = lab.uas("uas_basic.xml", "gateway", h.CARRIER_IP, calls=None)
    edge = lab.edge(lab_snapshot(gateway_port=gateway.local_port, max_channels=100, max_cps=1))
    gateway.start().wait_listening()

    # uac_basic counts an unexpected 503 as a failed call (SIPp ACKs it): failed = refused.
    burst = lab.uac(
        "uac_basic.xml",
        "pbx-burst",
        h.PBX_IP,
        edge,
        caller=DID,
        callee=DIALLED,
        calls=10,
        rate=10,
        duration_ms=0,
    ).run()
    assert burst.stats is not None and burst.stats.created == 10, burst.explain()
    admitted, refused = burst.successful, burst.failed
    assert admitted >= 1 and refused >= 5 and admitted + refused == 10, burst.explain()
    time.sleep(0.3)
    assert gateway.stop().successful == admitted

    records = final_cdrs(edge, 10)
    reasons = sorted(record["reason"] for record in records)
    assert reasons == sorted(["normal_clearing"] * admitted + ["cps_limit"] * refused)
    for record in records:
        if record["reason"] == "cps_limit":
            assert record["final_code"] == 503 and record["trunk_id"] == TRUNK
    assert {record["a_call_id"] for record in records} == set(sent_call_ids(burst))


def test_unknown_number_is_refused_404(lab: Lab) -> None:
    edge = lab.edge(lab_snapshot())
    carrier = lab.uac(
        "uac_expect_refusal.xml",
        "carrier",
        h.CARRIER_IP,
        edge,
        caller=CARRIER_CALLER,
        callee="+14155550999",
        variables={"expected": "404"},
    ).run()
    assert_ok(carrier)
    (a_call_id,) = sent_call_ids(carrier)
    one_cdr(
        final_cdrs(edge, 1),
        a_call_id,
        direction="inbound",
        reason="unknown_number",
        final_code=404,
        trunk_id=None,
        callee_e164="+14155550999",
        routes=[],
    )


def test_unknown_source_is_challenged_and_wrong_credentials_refused(lab: Lab) -> None:
    """A source in no ACL and no carrier: without credentials the edge challenges (407 with
    Proxy-Authenticate); with wrong ones it refuses 403, reason auth_failed. A challenged
    attempt that never retries ends in one CDR (reason auth_required, final code 407) at the
    edge's challenge timeout, or when the edge shuts down, which is what this test sees."""
    gateway = lab.uas("uas_basic.xml", "gateway", h.CARRIER_IP, calls=None)
    edge = lab.edge(lab_snapshot(gateway_port=gateway.local_port))
    gateway.start().wait_listening()

    anonymous = lab.uac(
        "uac_expect_refusal.xml",
        "anonymous",
        h.STRANGER_IP,
        edge,
        caller=DID,
        callee=DIALLED,
        variables={"expected": "407"},
    ).run()
    assert_ok(anonymous)
    (challenge,) = anonymous.received(407)
    assert any(
        "MD5" in value or "algorithm" not in value
        for value in challenge.headers("Proxy-Authenticate")
    ), challenge.head

    impostor = lab.uac(
        "uac_auth_expect_refusal.xml",
        "impostor",
        h.STRANGER_IP,
        edge,
        caller=DID,
        callee=DIALLED,
        auth=(USERNAME, "not-the-password"),
        variables={"expected": "403"},
    ).run()
    assert_ok(impostor)
    carrier = gateway.stop()
    assert carrier.stats is not None and carrier.stats.incoming == 0, carrier.explain()

    edge.wait_for_cdrs(1)  # the impostor's; the challenged one's comes at shutdown
    assert edge.stop(grace=10) == 0, edge.explain()
    records = edge.cdrs()
    (impostor_id,) = sent_call_ids(impostor)
    one_cdr(
        records,
        impostor_id,
        reason="auth_failed",
        final_code=403,
        trunk_id=None,
        source_ip=h.STRANGER_IP,
        answer_at=None,
        routes=[],
    )
    (anonymous_id,) = sent_call_ids(anonymous)
    one_cdr(
        records,
        anonymous_id,
        reason="auth_required",
        final_code=407,
        trunk_id=None,
        source_ip=h.STRANGER_IP,
        routes=[],
    )
    assert len(records) == 2, records


# --- robustness -------------------------------------------------------------------------------


MALFORMED_MAX_FORWARDS = (
    "INVITE sip:{callee}@{edge} SIP/2.0\r\n"
    "Via: SIP/2.0/UDP {me};branch=z9hG4bK-malformed-mf;rport\r\n"
    "Max-Forwards: lots\r\n"
    "From: <sip:{caller}@{me}>;tag=mf1\r\n"
    "To: <sip:{callee}@{edge}>\r\n"
    "Call-ID: malformed-max-forwards@127.0.0.9\r\n"
    "CSeq: 1 INVITE\r\n"
    "Content-Length: 0\r\n"
    "\r\n"
)
TRUNCATED_INVITE = (
    "INVITE sip:{callee}@{edge} SIP/2.0\r\n"
    "Via: SIP/2.0/UDP {me};branch=z9hG4bK-malformed-cl;rport\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:{caller}@{me}>;tag=cl1\r\n"
    "To: <sip:{callee}@{edge}>\r\n"
    "Call-ID: malformed-truncated@127.0.0.9\r\n"
    "CSeq: 1 INVITE\r\n"
    "Content-Type: application/sdp\r\n"
    "Content-Length: 400\r\n"
    "\r\n"
    "v=0\r\no=- 1 1 IN IP4 127.0.0.9\r\n"
)


def test_malformed_messages_get_400_while_calls_carry_on(lab: Lab) -> None:
    gateway = lab.uas("uas_basic.xml", "gateway", h.CARRIER_IP)
    edge = lab.edge(lab_snapshot(gateway_port=gateway.local_port))
    gateway.start().wait_listening()
    pbx = lab.uac(
        "uac_basic.xml", "pbx", h.PBX_IP, edge, caller=DID, callee=DIALLED, duration_ms=1500
    ).start()
    edge.wait_active_calls(1)

    raw = h.RawSipClient(h.STRANGER_IP, edge.sip_address)
    try:
        fields = {
            "callee": DIALLED,
            "caller": DID,
            "edge": f"{edge.ip}:{edge.sip_port}",
            "me": f"{h.STRANGER_IP}:{raw.port}",
        }
        for garbage in (b"\x00\xff\xfe garbage \x80" * 20, b"INVITE\r\n\r\n", b"SIP/2.0 200\r\n"):
            raw.send(garbage)
        assert raw.receive_all(0.3) == []  # nothing to answer to: silence, not a crash

        for template in (MALFORMED_MAX_FORWARDS, TRUNCATED_INVITE):
            raw.send(template.format(**fields).encode())
            reply = raw.receive(2.0)
            assert reply is not None, f"no answer to\n{template}\n{edge.explain()}"
            status = h.status_line(reply)
            assert status is not None and status[0] == 400 and status[1].strip(), reply
    finally:
        raw.close()

    assert edge.health()["status"] == "ok"
    assert_ok(pbx.wait(10), gateway.wait(10))  # the call in progress went on untouched
    (a_call_id,) = sent_call_ids(pbx.result())
    records = final_cdrs(edge, 1)  # a request answered 400 is not a call attempt
    one_cdr(records, a_call_id, reason="normal_clearing", final_code=200)


def test_sigterm_drains_calls_in_progress_then_exits_0(lab: Lab) -> None:
    gateway = lab.uas("uas_basic.xml", "gateway", h.CARRIER_IP)
    edge = lab.edge(lab_snapshot(gateway_port=gateway.local_port), drain_timeout=15)
    gateway.start().wait_listening()
    long_call = lab.uac(
        "uac_basic.xml",
        "pbx-long",
        h.PBX_IP,
        edge,
        caller=DID,
        callee=DIALLED,
        duration_ms=2000,
    ).start()
    edge.wait_active_calls(1)

    edge.terminate()  # SIGTERM
    deadline = time.monotonic() + 3
    while edge.health()["status"] != "draining":
        assert time.monotonic() < deadline, "the edge does not say it is draining"
        time.sleep(0.05)
    health = edge.health()
    assert health["active_calls"] == 1 and health["node"] == edge.node

    refused = lab.uac(
        "uac_expect_refusal.xml",
        "pbx-new",
        h.PBX_IP,
        edge,
        caller=DID,
        callee=DIALLED,
        variables={"expected": "503"},
    ).run()
    assert_ok(refused)
    assert edge.running, "the edge left before its call ended"

    assert_ok(long_call.wait(10), gateway.wait(10))  # BYE relayed and answered after SIGTERM
    assert edge.wait_exit(10) == 0, edge.explain()

    records = edge.cdrs()
    assert len(records) == 2, records
    (long_id,) = sent_call_ids(long_call.result())
    one_cdr(records, long_id, reason="normal_clearing", final_code=200, hangup_side="caller")
    (refused_id,) = sent_call_ids(refused)
    one_cdr(records, refused_id, reason="draining", final_code=503, answer_at=None)
