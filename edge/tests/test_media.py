"""Media anchoring in the call machine (sans-IO) and the ng client's codec and resends.

The core asks for rtpengine's work as outputs (`MediaOffer`, `MediaAnswer`, `MediaDelete`) and
takes the answers as inputs (`media_decided`, `media_deleted`); here the test plays rtpengine.
The ng client is driven against a real UDP socket on loopback that plays an rtpengine which
loses the first datagram. The end-to-end behaviour with a real rtpengine and SIPp is in
edge/tests/test_media_e2e.py.
"""

from __future__ import annotations

import asyncio
import socket

import orjson
import pytest

from edge import bencode
from edge.media import (
    MediaAnswer,
    MediaDelete,
    MediaFailed,
    MediaOffer,
    MediaReady,
    MediaStats,
    summary_from_query,
)
from edge.runtime.rtpengine import MediaRelay, NgClient, parse_engines
from edge.sip.message import Request, Response, make_request
from edge.tests.factories import customer_doc, gateway_doc, trunk_doc
from edge.tests.test_b2bua import GATEWAY, PBX, SDP, Edge, answer, in_dialog, invite

ENGINE = "127.0.0.1:22222"
OFFERED = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.50\r\ns=-\r\nc=IN IP4 192.0.2.50\r\nt=0 0\r\n"
    b"m=audio 30000 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
)
ANSWERED = OFFERED.replace(b"30000", b"30002")


class MediaEdge(Edge):
    def __init__(self, media_mode: str = "anchor", srtp: str = "off", engines: bool = True):
        super().__init__(
            trunks=[trunk_doc(media_mode=media_mode, srtp=srtp)], customers=[customer_doc()]
        )
        self.core.settings.media_engines = engines

    def media(self) -> list[object]:
        """Media operations asked since the last call."""
        asked = [e for e in self.events if isinstance(e, MediaOffer | MediaAnswer | MediaDelete)]
        self.events = [e for e in self.events if e not in asked]
        return asked

    def decided(self, decision: object) -> None:
        self._keep(self.core.media_decided(decision, self.now, self.wall))  # type: ignore[arg-type]

    def deleted(self, stats: MediaStats) -> None:
        self._keep(self.core.media_deleted(stats, self.now, self.wall))


def _answered_call(edge: MediaEdge) -> tuple[Request, Request, Response]:
    """An anchored outbound call, answered: (A INVITE, B INVITE, the callee's 200)."""
    a_invite = invite(PBX)
    edge.send(a_invite, PBX)
    (offer,) = edge.media()
    assert isinstance(offer, MediaOffer) and (offer.op, offer.leg, offer.sdp) == (1, "a", SDP)
    assert offer.params["transport-protocol"] == "RTP/AVP"  # the carrier's side: plain RTP
    assert offer.params["ICE"] == "remove" and "flags" not in offer.params  # latching: default
    assert offer.params["replace"] == ["origin", "session-connection"]
    assert edge.take(GATEWAY) == []  # nothing goes out before rtpengine has rewritten it
    edge.decided(MediaReady(offer.call_id, 1, OFFERED, ENGINE))
    (b_invite,) = edge.take(GATEWAY)
    assert isinstance(b_invite, Request) and b_invite.body == OFFERED
    ok = answer(b_invite, 200, tag="callee", peer=GATEWAY)
    edge.send(ok, GATEWAY)
    (asked,) = edge.media()
    assert isinstance(asked, MediaAnswer) and (asked.op, asked.leg, asked.sdp) == (2, "b", SDP)
    assert [m for m in edge.take(PBX) if isinstance(m, Response) and m.status == 200] == []
    edge.decided(MediaReady(asked.call_id, 2, ANSWERED, ENGINE))
    (a_ok,) = [m for m in edge.take(PBX) if isinstance(m, Response) and m.status == 200]
    assert a_ok.body == ANSWERED
    return a_invite, b_invite, a_ok


def test_anchored_call_relays_only_rtpengines_sdp_and_its_cdr_carries_the_stats():
    edge = MediaEdge()
    a_invite, _, a_ok = _answered_call(edge)
    (live,) = edge.core.calls()
    assert live["media"] == {
        "mode": "anchor",
        "engine": ENGINE,
        "addresses": {"a": "192.0.2.50:30002", "b": "192.0.2.50:30000"},
        "srtp": False,
    }
    edge.send(in_dialog("BYE", a_ok, a_invite, PBX, cseq=2), PBX)
    (delete,) = edge.media()
    assert isinstance(delete, MediaDelete)
    assert edge.cdrs == []  # the record waits for the session's statistics
    edge.deleted(MediaStats(delete.call_id, {"engine": ENGINE, "packets_in": 10, "bytes_in": 1720}))
    (record,) = edge.cdrs
    assert record.reason == "normal_clearing"
    assert record.media == {"engine": ENGINE, "packets_in": 10, "bytes_in": 1720, "mode": "rtp"}


def test_no_rtpengine_refuses_the_call_503_media_unavailable():
    edge = MediaEdge()
    edge.send(invite(PBX), PBX)
    (offer,) = edge.media()
    edge.decided(MediaFailed(offer.call_id, 1, "no rtpengine reachable"))
    (refusal,) = [m for m in edge.take(PBX) if isinstance(m, Response) and m.status >= 200]
    assert refusal.status == 503
    assert "media_unavailable" in (refusal.headers.get("Reason") or "")
    assert edge.take(GATEWAY) == []  # no callee was ever called
    (delete,) = edge.media()
    edge.deleted(MediaStats(delete.call_id, None))
    (record,) = edge.cdrs
    assert (record.reason, record.final_code, record.media) == ("media_unavailable", 503, None)
    assert edge.released == edge.acquired  # the slot is given back


def test_an_answer_the_call_no_longer_waits_for_changes_nothing():
    edge = MediaEdge()
    edge.send(invite(PBX), PBX)
    (offer,) = edge.media()
    edge.decided(MediaReady(offer.call_id, 7, OFFERED, ENGINE))  # not the pending op
    edge.decided(MediaReady("no-such-call", 1, OFFERED, ENGINE))
    assert edge.take(GATEWAY) == []
    edge.decided(MediaReady(offer.call_id, 1, OFFERED, ENGINE))
    assert len(edge.take(GATEWAY)) == 1


def test_hold_reoffer_goes_through_rtpengine_before_it_is_relayed():
    edge = MediaEdge()
    a_invite, _, a_ok = _answered_call(edge)
    plain = in_dialog("INVITE", a_ok, a_invite, PBX, cseq=2)
    hold = make_request(
        "INVITE",
        plain.uri,
        from_=plain.headers.get("From"),
        to=plain.headers.get("To"),
        call_id=plain.call_id,
        cseq=2,
        via=plain.headers.get("Via"),
        contact=f"<sip:pbx@{PBX[0]}:{PBX[1]}>",
        body=SDP + b"a=sendonly\r\n",
        content_type="application/sdp",
    )
    edge.send(hold, PBX)
    (reoffer,) = edge.media()
    assert isinstance(reoffer, MediaOffer) and (reoffer.op, reoffer.leg) == (3, "a")
    assert [m for m in edge.take(GATEWAY) if isinstance(m, Request)] == []
    edge.decided(MediaReady(reoffer.call_id, 3, OFFERED + b"a=sendonly\r\n", ENGINE))
    (relayed,) = [m for m in edge.take(GATEWAY) if isinstance(m, Request)]
    assert relayed.method == "INVITE" and relayed.body.endswith(b"a=sendonly\r\n")


def test_close_writes_the_cdrs_still_waiting_for_statistics():
    edge = MediaEdge()
    _answered_call(edge)
    edge._keep(edge.core.close(edge.now, edge.wall))
    assert [type(m) for m in edge.media()] == [MediaDelete]
    (record,) = edge.cdrs
    assert record.reason == "shutdown" and record.media is None


@pytest.mark.parametrize(
    "media_mode, engines, anchored",
    [
        ("passthrough", True, False),
        ("auto", False, False),
        ("auto", True, True),
        ("anchor", False, True),  # asks anyway: the runtime answers "no rtpengine", 503
    ],
)
def test_which_calls_are_anchored(media_mode, engines, anchored):
    edge = MediaEdge(media_mode=media_mode, engines=engines)
    edge.send(invite(PBX), PBX)
    assert bool(edge.media()) is anchored
    assert bool(edge.take(GATEWAY)) is not anchored


def test_srtp_required_refuses_a_plain_rtp_offer_488():
    edge = MediaEdge(srtp="required")
    edge.send(invite(PBX), PBX)
    (refusal,) = [m for m in edge.take(PBX) if isinstance(m, Response) and m.status >= 200]
    assert refusal.status == 488 and "srtp_required" in (refusal.headers.get("Reason") or "")
    assert edge.media() == [] and edge.cdrs[-1].reason == "srtp_required"


def test_summary_reads_rtpengines_statistics():
    query = {
        "totals": {"RTP": {"packets": 500, "bytes": 86000, "errors": 0}},
        "SSRC": {
            "1234": {"average MOS": {"MOS": 43, "jitter": 3, "packet loss": 2}},
            "5678": {"average MOS": {"MOS": 41, "jitter": 5, "packet loss": 0}},
        },
    }
    assert summary_from_query(query, ENGINE) == {
        "engine": ENGINE,
        "packets_in": 500,
        "bytes_in": 86000,
        "packets_lost": 2,
        "jitter_ms": 5.0,
        "mos": 4.1,
    }


# --- the ng client -----------------------------------------------------------------------------


def test_bencode_round_trip_and_unsorted_keys():
    value = {"command": "offer", "flags": ["symmetric"], "n": 3, "sdp": b"v=0\r\n"}
    assert bencode.decode(bencode.encode(value)) == {
        b"command": b"offer",
        b"flags": [b"symmetric"],
        b"n": 3,
        b"sdp": b"v=0\r\n",
    }
    assert bencode.decode(b"d6:result2:ok5:callslee") == {b"result": b"ok", b"calls": []}
    for broken in (b"", b"d6:result", b"5:ab", b"i1", b"x"):
        with pytest.raises(bencode.BencodeError):
            bencode.decode(broken)


def test_engines_option():
    assert parse_engines("udp:127.0.0.1:22222, udp:[::1]:2223,10.0.0.2:22222") == [
        ("127.0.0.1", 22222),
        ("::1", 2223),
        ("10.0.0.2", 22222),
    ]
    with pytest.raises(ValueError, match="udp:HOST:PORT"):
        parse_engines("udp:127.0.0.1")


def test_ng_client_resends_a_lost_request_and_gives_up_on_a_silent_engine():
    async def scenario() -> tuple[list[object], list[object], int]:
        loop = asyncio.get_running_loop()
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        server.bind(("127.0.0.1", 0))
        server.setblocking(False)
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 0))
        seen: list[bytes] = []

        def on_datagram() -> None:
            data, addr = server.recvfrom(65535)
            cookie, _, body = data.partition(b" ")
            seen.append(cookie)
            if orjson.loads(body)["command"] == "ping" or len(seen) > 1:
                server.sendto(cookie + b' {"result":"pong"}', addr)

        loop.add_reader(server.fileno(), on_datagram)
        client = NgClient(
            [server.getsockname(), silent.getsockname()],
            loop=loop,
            timeout=0.05,
            retries=2,
            health_interval=60,
        )
        client.transport = None
        await loop.create_datagram_endpoint(lambda: client, local_addr=("127.0.0.1", 0))
        answered: list[object] = []
        failed: list[object] = []
        done = asyncio.Event()

        def result(sink: list[object]):  # type: ignore[no-untyped-def]
            def callback(answer, reason):  # type: ignore[no-untyped-def]
                sink.append(answer if answer is not None else reason)
                if answered and failed:
                    done.set()

            return callback

        client.request(client.engines[0], {"command": "query"}, result(answered))
        client.request(client.engines[1], {"command": "query"}, result(failed))
        await asyncio.wait_for(done.wait(), 5)
        loop.remove_reader(server.fileno())
        up = [engine.up for engine in client.engines]
        client.close()
        server.close()
        silent.close()
        return answered, failed, up.count(True)

    answered, failed, up = asyncio.run(scenario())
    assert answered == [{"result": "pong"}]  # the second sending was answered
    assert len(failed) == 1 and "no answer" in str(failed[0])
    assert up == 1  # the silent engine is down: new calls go elsewhere


def test_relay_speaks_json_and_bencodes_an_sdp_that_is_not_utf8_byte_for_byte():
    """rtpengine takes either format and answers in kind: this one plays rtpengine, rewriting
    the SDP's address, and records the format of each request."""
    utf8 = OFFERED.replace(b"s=-", b"s=Caf\xc3\xa9")
    latin1 = OFFERED.replace(b"s=-", b"s=Caf\xe9")  # not UTF-8: JSON cannot carry it

    async def scenario() -> tuple[list[bytes], list[object], list[object], str]:
        loop = asyncio.get_running_loop()
        engine = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        engine.bind(("127.0.0.1", 0))
        engine.setblocking(False)
        formats: list[bytes] = []

        def on_datagram() -> None:
            data, addr = engine.recvfrom(65535)
            cookie, _, body = data.partition(b" ")
            formats.append(body[:1])
            if body[:1] == b"{":
                command = orjson.loads(body)
                if command["command"] == "offer":
                    sdp = command["sdp"].replace("192.0.2", "203.0.113")
                    answer = orjson.dumps({"result": "ok", "sdp": sdp})
                else:
                    answer = b'{"result":"ok","totals":{"RTP":{"packets":7,"bytes":700}}}'
            else:
                sdp = bencode.decode(body)[b"sdp"].replace(b"192.0.2", b"203.0.113")
                answer = bencode.encode({"result": "ok", "sdp": sdp})
            engine.sendto(cookie + b" " + answer, addr)

        loop.add_reader(engine.fileno(), on_datagram)
        client = NgClient([engine.getsockname()], loop=loop, health_interval=60)
        await loop.create_datagram_endpoint(lambda: client, local_addr=("127.0.0.1", 0))
        decided: list[object] = []
        deleted: list[object] = []
        done = asyncio.Event()

        def on_decided(decision: object) -> None:
            decided.append(decision)

        def on_deleted(stats: object) -> None:
            deleted.append(stats)
            done.set()

        relay = MediaRelay(client, decided=on_decided, deleted=on_deleted)
        params = {"ICE": "remove", "transport-protocol": "RTP/AVP"}
        relay.handle(MediaOffer("utf8", 1, "a", utf8, params))
        relay.handle(MediaOffer("latin1", 1, "a", latin1, params))
        while len(decided) < 2:
            await asyncio.sleep(0.01)
        relay.handle(MediaDelete("utf8"))
        await asyncio.wait_for(done.wait(), 5)
        loop.remove_reader(engine.fileno())
        client.close()
        engine.close()
        return formats, decided, deleted, client.engines[0].name

    formats, decided, deleted, name = asyncio.run(scenario())
    assert formats == [b"{", b"d", b"{"]  # offer as JSON, offer bencoded, delete as JSON
    ready = {d.call_id: d.sdp for d in decided if isinstance(d, MediaReady)}
    assert ready == {
        "utf8": utf8.replace(b"192.0.2", b"203.0.113"),
        "latin1": latin1.replace(b"192.0.2", b"203.0.113"),  # the same bytes back
    }
    assert deleted == [MediaStats("utf8", {"engine": name, "packets_in": 7, "bytes_in": 700})]


@pytest.mark.parametrize("gateway_srtp, protocol", [(False, "RTP/AVP"), (True, "RTP/SAVP")])
def test_carriers_get_plain_rtp_unless_their_gateway_asks_for_srtp(gateway_srtp, protocol):
    edge = Edge(
        trunks=[trunk_doc(media_mode="anchor", srtp="offered")],
        customers=[customer_doc()],
        gateways=[gateway_doc(srtp=gateway_srtp)],
    )
    edge.send(invite(PBX), PBX)
    (offer,) = [e for e in edge.events if isinstance(e, MediaOffer)]
    assert offer.params["transport-protocol"] == protocol
    assert "flags" not in offer.params  # no OSRTP-offer: the customer's SRTP is its own side's


# --- the call machine under random input, with media anchored -----------------------------------

from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import invariant, precondition, rule  # noqa: E402

from edge.tests.test_call_machine import CallMachine  # noqa: E402


class AnchoredCallMachine(CallMachine):
    """edge/tests/test_call_machine.py's random caller, callee, timers, operator and slots, on
    a trunk that anchors media, with rtpengine answering each media operation at any time (or
    never, until the end), successfully or not, each delete at once. On top of one CDR per
    attempt and no slot leak: every call that asked rtpengine anything gets exactly one
    MediaDelete (no session leaks), and never an operation after it."""

    def __init__(self) -> None:
        super().__init__()
        trunk = trunk_doc(
            caller_id_policy="pass_through",
            max_call_duration=600,
            max_channels=3,
            media_mode="anchor",
        )
        self.edge = Edge(trunks=[trunk])
        self.edge.limits = self.limits
        self.edge.core.settings.media_engines = True
        self.ops: list[MediaOffer | MediaAnswer] = []  # unanswered
        self.deletes: list[str] = []  # unanswered MediaDelete call ids
        self.asked: set[str] = set()  # calls that asked rtpengine something
        self.deleted: list[str] = []  # every MediaDelete, in order

    def _pump(self) -> None:
        edge = self.edge
        for out in [e for e in edge.events if isinstance(e, MediaOffer | MediaAnswer)]:
            assert out.call_id not in self.deleted, "a media operation after the delete"
            self.asked.add(out.call_id)
            self.ops.append(out)
        new_deletes = [e.call_id for e in edge.events if isinstance(e, MediaDelete)]
        edge.events = [
            e for e in edge.events if not isinstance(e, MediaOffer | MediaAnswer | MediaDelete)
        ]
        # rtpengine answers a delete at once (the base machine expects a call's CDR as soon as
        # its BYE is answered; the CDR waits for the delete's answer).
        for call_id in new_deletes:
            self.deleted.append(call_id)
            self.deletes.append(call_id)
            self._delete(call_id)
        super()._pump()

    @precondition(lambda self: self.ops)
    @rule(data=st.data(), ok=st.booleans())
    def rtpengine_answers(self, data: st.DataObject, ok: bool) -> None:
        op = data.draw(st.sampled_from(self.ops))
        self.ops.remove(op)
        edge = self.edge
        decision: MediaReady | MediaFailed = (
            MediaReady(op.call_id, op.op, OFFERED if op.leg == "a" else ANSWERED, ENGINE)
            if ok
            else MediaFailed(op.call_id, op.op, "rtpengine error")
        )
        edge._keep(edge.core.media_decided(decision, edge.now, edge.wall))
        self._pump()

    def _delete(self, call_id: str) -> None:
        self.deletes.remove(call_id)
        edge = self.edge
        edge._keep(
            edge.core.media_deleted(MediaStats(call_id, {"packets_in": 1}), edge.now, edge.wall)
        )
        self._pump()

    def _all_over(self) -> None:
        while self.deletes:
            self._delete(self.deletes[0])
        super()._all_over()
        assert self.asked <= set(self.deleted), "a media session never deleted"

    @invariant()
    def one_delete_per_call(self) -> None:
        assert len(self.deleted) == len(set(self.deleted)), "a session deleted twice"

    def teardown(self) -> None:
        while self.ops:  # rtpengine answers whatever is still pending, then time runs out
            self.rtpengine_answers_all()
        super().teardown()

    def rtpengine_answers_all(self) -> None:
        op = self.ops.pop(0)
        edge = self.edge
        ready = MediaReady(op.call_id, op.op, OFFERED, ENGINE)
        edge._keep(edge.core.media_decided(ready, edge.now, edge.wall))
        self._pump()


AnchoredCallMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_anchored_call_machine = AnchoredCallMachine.TestCase
