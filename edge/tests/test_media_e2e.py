"""Media anchoring with real processes: the edge, a userspace rtpengine and SIPp with RTP.

Each test starts its own rtpengine (``--table=-1``, media on 127.0.0.5, ng on a free port) and
an edge with ``--rtpengine`` pointing at it; SIPp plays SIPp's sample PCMA audio
(/usr/share/sip-tester/g711a.pcap) and its callee echoes what it receives (``-rtp_echo``).
What is checked: the SDP each side receives names rtpengine's address and never the other
side's; rtpengine counts packets from both legs (``query``); hold and resume re-INVITEs are
re-anchored and the audio goes on; an SRTP trunk gets SDES on its side only; every session is
deleted at the call's end (``list`` is empty); the CDR carries the media summary; with
rtpengine gone, anchored calls are refused 503 ``media_unavailable`` while a passthrough trunk
keeps working.

Needs sipp and rtpengine (Debian packages sip-tester and rtpengine-daemon; .ci/run installs
them). Skipped without, except in CI, which fails instead (TRUNKLINE_REQUIRE_MEDIA=1).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.tests import sipp_harness as h
from edge.tests.factories import origination_doc, snapshot_doc, trunk_doc
from edge.tests.test_edge_sipp import (
    CARRIER_CALLER,
    CUSTOMER,
    DIALLED,
    DID,
    TRUNK,
    Lab,
    assert_ok,
    final_cdrs,
    lab_snapshot,
    one_cdr,
    sent_call_ids,
)

pytestmark = [pytest.mark.sipp]

PASSTHROUGH_PBX_IP = "127.0.0.4"  # a second customer PBX, on a trunk that passes SDP through
PASSTHROUGH_TRUNK = 2
PASSTHROUGH_DID = "+14155550111"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    h.require_sipp()
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        print(lab.report())
        lab.close()


@pytest.fixture
def rtpengine(tmp_path: Path) -> Iterator[h.Rtpengine]:
    if h.rtpengine_binary() is None:
        if os.environ.get("TRUNKLINE_REQUIRE_MEDIA"):
            pytest.fail("rtpengine is not installed (apt-get install rtpengine-daemon)")
        pytest.skip("rtpengine is not installed (apt-get install rtpengine-daemon)")
    engine = h.Rtpengine(tmp_path / "rtpengine").start()
    try:
        yield engine
    finally:
        print(engine.log())
        engine.stop()


def media_args(ip: str, *, echo: bool = False) -> list[str]:
    """SIPp's media port on `ip` (a free one: parallel runs share the addresses)."""
    return ["-mp", str(h.free_udp_port(ip)), *(["-rtp_echo"] if echo else [])]


def sdp_of(message: h.SipMessage) -> str:
    parts = re.split(r"\r?\n\r?\n", message.text, maxsplit=1)
    return parts[1] if len(parts) == 2 else ""


def assert_anchored(sdp: str, *hidden: str) -> None:
    """The SDP names rtpengine's media address and none of `hidden`."""
    assert f"c=IN IP4 {h.RTPENGINE_IP}" in sdp, sdp
    for address in hidden:
        assert address not in sdp, f"{address} leaked into\n{sdp}"


def wait_answered(edge: h.EdgeProcess, timeout: float = 5.0) -> dict[str, Any]:
    (call,) = edge.wait_active_calls(1, timeout)
    return call


def wait_no_sessions(engine: h.Rtpengine, timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    sessions = engine.sessions()
    while sessions and time.monotonic() < deadline:
        time.sleep(0.1)
        sessions = engine.sessions()
    return sessions


def test_anchored_call_carries_audio_both_ways_through_rtpengine_across_hold_and_resume(
    lab: Lab, rtpengine: h.Rtpengine
) -> None:
    carrier = lab.uas(
        "uas_media_hold.xml", "carrier", h.CARRIER_IP, extra=media_args(h.CARRIER_IP, echo=True)
    )
    edge = lab.edge(
        lab_snapshot(gateway_port=carrier.local_port, media_mode="anchor"),
        extra_args=["--rtpengine", rtpengine.spec],
    )
    carrier.start().wait_listening()
    pbx = lab.uac(
        "uac_media_hold.xml",
        "pbx",
        h.PBX_IP,
        edge,
        caller=DID,
        callee=DIALLED,
        duration_ms=2000,
        extra=media_args(h.PBX_IP),
    ).start()

    call = wait_answered(edge)
    assert call["media"]["mode"] == "anchor"
    assert call["media"]["engine"] == f"{rtpengine.ng_address[0]}:{rtpengine.ng_address[1]}"
    # Each side was told to send to rtpengine.
    for leg in ("a", "b"):
        assert call["media"]["addresses"][leg].startswith(f"{h.RTPENGINE_IP}:"), call
    assert rtpengine.sessions() == [call["call_id"]]
    time.sleep(0.7)  # before the hold (at 1 s): the caller plays, the callee echoes
    before_hold = rtpengine.leg_packets(call["call_id"])
    assert before_hold.get("a", 0) > 0 and before_hold.get("b", 0) > 0, before_hold
    time.sleep(1.6)  # hold at 1 s, resume at 1.3 s, then audio again
    after_resume = rtpengine.leg_packets(call["call_id"])
    assert after_resume["a"] > before_hold["a"] and after_resume["b"] > before_hold["b"]

    caller = pbx.wait(20)
    callee = carrier.wait(10)
    assert_ok(caller, callee)
    invites = callee.received("INVITE")
    assert len(invites) == 3  # the call, hold, resume
    for invite in invites:
        assert_anchored(sdp_of(invite), h.PBX_IP)
    assert "a=sendonly" in sdp_of(invites[1]) and "a=sendrecv" in sdp_of(invites[2])
    answers = [m for m in caller.received(200) if "application/sdp" in m.text]
    assert len(answers) == 3
    for answer in answers:
        assert_anchored(sdp_of(answer), h.CARRIER_IP)

    assert wait_no_sessions(rtpengine) == []
    (a_call_id,) = sent_call_ids(caller)
    record = one_cdr(final_cdrs(edge, 1), a_call_id, reason="normal_clearing", final_code=200)
    media = record["media"]
    assert media["engine"] == call["media"]["engine"] and media["mode"] == "rtp"
    assert media["packets_in"] >= after_resume["a"] + after_resume["b"]
    assert media["bytes_in"] > media["packets_in"]


def test_srtp_trunk_gets_sdes_on_its_side_only(lab: Lab, rtpengine: h.Rtpengine) -> None:
    pbx = lab.uas("uas_srtp.xml", "pbx", h.PBX_IP, extra=media_args(h.PBX_IP))
    edge = lab.edge(
        lab_snapshot(origination=[(pbx.uri, 10)], media_mode="anchor", srtp="required"),
        extra_args=["--rtpengine", rtpengine.spec],
    )
    pbx.start().wait_listening()
    carrier = lab.uac(
        "uac_basic.xml",
        "carrier",
        h.CARRIER_IP,
        edge,
        caller=CARRIER_CALLER,
        callee=DID,
        duration_ms=300,
        extra=media_args(h.CARRIER_IP),
    ).run()
    callee = pbx.wait(10)
    assert_ok(carrier, callee)

    (invite,) = callee.received("INVITE")
    offer = sdp_of(invite)
    assert_anchored(offer, h.CARRIER_IP)
    assert "RTP/SAVP" in offer and "a=crypto:" in offer, offer  # SDES towards the customer
    # Two suites only, so the INVITE fits in a UDP datagram (RFC 3261 18.1.1).
    suites = {line.split()[1] for line in offer.splitlines() if line.startswith("a=crypto:")}
    assert suites == {"AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"}, offer
    (answer,) = [m for m in carrier.received(200) if "application/sdp" in m.text]
    plain = sdp_of(answer)
    assert_anchored(plain, h.PBX_IP)
    assert "RTP/AVP" in plain and "RTP/SAVP" not in plain and "a=crypto" not in plain, plain

    assert wait_no_sessions(rtpengine) == []
    (a_call_id,) = sent_call_ids(carrier)
    record = one_cdr(final_cdrs(edge, 1), a_call_id, direction="inbound", final_code=200)
    assert record["media"]["mode"] == "srtp"


def test_without_rtpengine_anchored_calls_are_refused_and_passthrough_trunks_carry_on(
    lab: Lab, rtpengine: h.Rtpengine
) -> None:
    carrier = lab.uas("uas_basic.xml", "carrier", h.CARRIER_IP, extra=media_args(h.CARRIER_IP))
    snapshot = lab_snapshot(gateway_port=carrier.local_port, media_mode="anchor")
    snapshot["trunks"].append(
        trunk_doc(
            id=PASSTHROUGH_TRUNK,
            customer=CUSTOMER,
            acl=[f"{PASSTHROUGH_PBX_IP}/32"],
            origination_uris=[origination_doc()],
            media_mode="passthrough",
        )
    )
    snapshot["numbers"].append([PASSTHROUGH_DID, CUSTOMER, PASSTHROUGH_TRUNK])
    snapshot = snapshot_doc(
        trunks=snapshot["trunks"], numbers=snapshot["numbers"], gateways=snapshot_gateways(snapshot)
    )
    edge = lab.edge(snapshot, extra_args=["--rtpengine", rtpengine.spec])
    carrier.start().wait_listening()

    rtpengine.kill()
    deadline = time.monotonic() + 10
    while edge.metric("trunkline_edge_rtpengine_up") and time.monotonic() < deadline:
        time.sleep(0.2)  # the edge notices at its next ping (every second)
    assert edge.metric("trunkline_edge_rtpengine_up") == 0

    refused = lab.uac(
        "uac_expect_refusal.xml",
        "pbx",
        h.PBX_IP,
        edge,
        caller=DID,
        callee=DIALLED,
        variables={"expected": "503"},
    ).run()
    assert_ok(refused)
    (refusal,) = refused.received(503)
    assert "media_unavailable" in (refusal.header("Reason") or ""), refusal.text

    carried = lab.uac(
        "uac_basic.xml",
        "pbx2",
        PASSTHROUGH_PBX_IP,
        edge,
        caller=PASSTHROUGH_DID,
        callee=DIALLED,
        duration_ms=200,
        extra=media_args(PASSTHROUGH_PBX_IP),
    ).run()
    assert_ok(carried)
    (invite,) = carrier.wait(10).received("INVITE")
    assert f"c=IN IP4 {PASSTHROUGH_PBX_IP}" in sdp_of(invite)  # passthrough: untouched

    records = final_cdrs(edge, 2)
    (refused_id,) = sent_call_ids(refused)
    one_cdr(records, refused_id, reason="media_unavailable", final_code=503, trunk_id=TRUNK)
    (carried_id,) = sent_call_ids(carried)
    record = one_cdr(records, carried_id, reason="normal_clearing", trunk_id=PASSTHROUGH_TRUNK)
    assert record["media"] is None


def snapshot_gateways(snapshot: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {**gateway, "carrier": carrier["id"]}
        for carrier in snapshot["carriers"]
        for gateway in carrier["gateways"]
    ]
