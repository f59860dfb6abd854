"""Two real edge processes share one trunk's channel limit through Redis.

The PBX (127.0.0.2) sends 30 INVITEs, alternating between the two edges, to a carrier gateway
(127.0.0.3) that never answers, so every admitted call holds its slot. With a limit of 10,
exactly 10 are admitted (an INVITE reaches the gateway) and 20 are refused with 503
and the reason ``channel_limit`` on their CDRs, whichever edge they reached.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.sip.message import Response, make_request, new_branch, new_tag
from edge.sip.parser import parse_message
from edge.tests.factories import gateway_doc, snapshot_doc, trunk_doc
from edge.tests.redis_server import redis_server
from edge.tests.sipp_harness import CARRIER_IP, PBX_IP, EdgeProcess, RawSipClient

ATTEMPTS = 30
LIMIT = 10
REDIS_URL = ""  # this module's own server, set by `own_redis`

pytestmark = [pytest.mark.slow, pytest.mark.needs("redis")]


@pytest.fixture(scope="module", autouse=True)
def own_redis() -> Iterator[str]:
    global REDIS_URL
    with redis_server() as url:
        REDIS_URL = url
        yield url


def _invite(edge: tuple[str, int], pbx_port: int, n: int) -> bytes:
    return make_request(
        "INVITE",
        f"sip:+14155550{n:03d}@{edge[0]}:{edge[1]}",
        from_=f"<sip:+14155550100@{PBX_IP}>;tag={new_tag()}",
        to=f"<sip:+14155550{n:03d}@{edge[0]}>",
        call_id=f"{uuid.uuid4().hex}@{PBX_IP}",
        cseq=1,
        via=f"SIP/2.0/UDP {PBX_IP}:{pbx_port};branch={new_branch()}",
        contact=f"<sip:pbx@{PBX_IP}:{pbx_port}>",
    ).to_bytes()


@pytest.fixture
def fresh_counters():
    """Trunk 1's shared counters, emptied: slots of edges stopped by earlier runs would
    otherwise count until their leases expire (which is the point of leases)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)

    def clear() -> None:
        for key in client.scan_iter("tl:trunk:1:*"):
            client.delete(key)

    clear()
    yield
    clear()


@pytest.mark.usefixtures("fresh_counters")
def test_two_edges_share_a_channel_limit(tmp_path: Path) -> None:
    gateway = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gateway.bind((CARRIER_IP, 0))
    gateway.settimeout(0.2)
    doc = snapshot_doc(
        trunks=[
            trunk_doc(
                acl=[f"{PBX_IP}/32"],
                max_channels=LIMIT,
                max_cps=1000,
                caller_id_policy="pass_through",
            )
        ],
        gateways=[gateway_doc(host=CARRIER_IP, port=gateway.getsockname()[1])],
    )
    redis_args = ["--redis-url", REDIS_URL, "--limit-share", "2"]
    prefix_env = {"EDGE_LOG_LEVEL": "WARNING"}
    edges = [
        EdgeProcess(tmp_path / name, doc, node=f"{name}-{uuid.uuid4().hex[:6]}", drain_timeout=0.5,
                    extra_args=redis_args, env=prefix_env)
        for name in ("edge-a", "edge-b")
    ]  # fmt: skip
    pbx = RawSipClient(PBX_IP, edges[0].sip_address)
    try:
        for edge in edges:
            edge.start()
        for n in range(ATTEMPTS):
            edge = edges[n % 2]
            pbx.remote = edge.sip_address
            pbx.send(_invite(edge.sip_address, pbx.port, n))
        # Final responses by call (a 503 is resent until ACKed, which this client never does).
        finals = {}
        for data in pbx.receive_all(window=3.0):
            response = parse_message(data)
            if isinstance(response, Response) and response.status >= 200:
                finals[response.call_id] = response.status
        assert sorted(finals.values()) == [503] * (ATTEMPTS - LIMIT), finals

        reached_gateway = set()
        while True:
            try:
                data, _ = gateway.recvfrom(65535)
            except TimeoutError:
                break
            if data.startswith(b"INVITE "):
                reached_gateway.add(data.split(b"Call-ID: ", 1)[1].split(b"\r\n", 1)[0])
        assert len(reached_gateway) == LIMIT

        refused = [c for edge in edges for c in edge.wait_for_cdrs(1)]
        assert len(refused) == ATTEMPTS - LIMIT
        assert {c["reason"] for c in refused} == {"channel_limit"}
        assert all(len(edge.cdrs()) > 0 for edge in edges)  # both edges refused some
    finally:
        pbx.close()
        gateway.close()
        for edge in edges:
            edge.stop(grace=5)
