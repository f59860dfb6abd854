"""The live board's WebSocket: who may connect (session, API key by header or subprotocol),
what each sees (own calls and trunks; staff all), events routed per tenant, a resync of an
edge's calls when it restarts, and the relay from the edges' Redis stream."""

from __future__ import annotations

import asyncio
import os
import uuid

import orjson
import pytest
import redis
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client

from accounts import services as account_services
from accounts.choices import Role
from config.asgi import application
from core.tenancy import SYSTEM
from trunking import live
from trunking.models import EdgeNode
from trunking.tests.live_fakes import fake_edge
from trunking.tokens import edge_node_token

pytestmark = pytest.mark.django_db(transaction=True)
ORIGIN = (b"origin", b"http://127.0.0.1")
TIMEOUT = 5


@pytest.fixture
def edge(trunk, other_trunk):
    node = EdgeNode.objects.create(name="edge-1", control_url="http://127.0.0.1:1")
    with fake_edge(edge_node_token(node)) as fake:
        node.control_url = f"http://127.0.0.1:{fake.port}"
        node.save(update_fields=["control_url"])
        fake.add_call("acme-call", trunk)
        fake.add_call("globex-call", other_trunk)
        yield fake


def key_for(customer, role=Role.ADMIN) -> str:
    return account_services.api_key_create(
        actor=SYSTEM, customer=customer, name="ws", role=role
    ).secret


def session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    name = settings.SESSION_COOKIE_NAME
    return f"{name}={client.cookies[name].value}".encode()


async def connect(path="/ws/live/", headers=(), subprotocols=None):
    communicator = WebsocketCommunicator(
        application, path, headers=[ORIGIN, *headers], subprotocols=subprotocols
    )
    connected, subprotocol = await communicator.connect(timeout=TIMEOUT)
    return communicator, connected, subprotocol


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


def test_session_staff_sees_every_call_and_edge(edge, staff_user):
    cookie = session_cookie(staff_user)

    async def scenario():
        ws, connected, _ = await connect(headers=[(b"cookie", cookie)])
        assert connected
        snapshot = await ws.receive_json_from(TIMEOUT)
        assert snapshot["type"] == "snapshot" and snapshot["me"]["staff"] is True
        assert {c["call_id"] for c in snapshot["calls"]} == {"acme-call", "globex-call"}
        assert {t["name"] for t in snapshot["trunks"]} == {"pbx-1", "globex-pbx"}
        assert [e["name"] for e in snapshot["edges"]] == ["edge-1"]
        assert snapshot["edges"][0]["health"] == "ok"
        assert snapshot["edges"][0]["applied_version"] == 1  # as the edge says (its /health)
        await ws.disconnect()

    run(scenario())


@pytest.mark.parametrize("how", ["header", "subprotocol"])
def test_a_customer_key_sees_only_its_own_calls_and_trunks(how, edge, customer):
    key = key_for(customer)

    async def scenario():
        if how == "header":
            ws, connected, _ = await connect(
                headers=[(b"authorization", f"Api-Key {key}".encode())]
            )
        elif how == "subprotocol":
            ws, connected, chosen = await connect(subprotocols=["trunkline.live", f"api-key.{key}"])
            assert chosen == "trunkline.live"
        assert connected
        snapshot = await ws.receive_json_from(TIMEOUT)
        assert [c["call_id"] for c in snapshot["calls"]] == ["acme-call"]
        assert [t["name"] for t in snapshot["trunks"]] == ["pbx-1"]
        assert snapshot["edges"] == [] and snapshot["me"]["can_hang_up"] is True
        await ws.disconnect()

    run(scenario())


def test_strangers_are_refused_at_the_handshake(db, member, customer):
    key = key_for(customer)
    revoked = account_services.api_key_create(actor=SYSTEM, customer=customer, name="old")
    account_services.api_key_revoke(actor=SYSTEM, api_key=revoked.api_key)
    cookie = session_cookie(member)

    async def scenario():
        for headers, path in [
            ((), "/ws/live/"),  # anonymous
            (((b"authorization", b"Api-Key tk_nope_nope"),), "/ws/live/"),
            (((b"authorization", f"Api-Key {revoked.secret}".encode()),), "/ws/live/"),
            ((), f"/ws/live/?api_key={key}"),  # not taken from the query (it would be logged)
        ]:
            ws, connected, _ = await connect(path=path, headers=headers)
            assert not connected, (headers, path)
        # A session from another site (its Origin) is refused; the same session here is not.
        foreign = WebsocketCommunicator(
            application,
            "/ws/live/",
            headers=[(b"origin", b"http://evil.test"), (b"cookie", cookie)],
        )
        assert (await foreign.connect(timeout=TIMEOUT))[0] is False
        ws, connected, _ = await connect(headers=[(b"cookie", cookie)])
        assert connected  # a customer member by session
        snapshot = await ws.receive_json_from(TIMEOUT)
        assert snapshot["me"]["customer"] == "Acme"
        await ws.disconnect()

    run(scenario())


def event(kind, call_id, trunk, **fields):
    return {
        "kind": kind,
        "call_id": call_id,
        "trunk_id": trunk.pk,
        "customer_id": trunk.customer_id,
        "direction": "outbound",
        "caller": "+14155550100",
        "callee": "+442071234567",
        "at": 1.0,
        "reason": None,
        "final_code": None,
        **fields,
    }


def test_events_reach_only_the_boards_allowed_to_see_them(
    edge, customer, other_customer, trunk, other_trunk, staff_user
):
    acme, globex = key_for(customer), key_for(other_customer)
    cookie = session_cookie(staff_user)

    async def scenario():
        boards = {}
        for name, headers in [
            ("acme", [(b"authorization", f"Api-Key {acme}".encode())]),
            ("globex", [(b"authorization", f"Api-Key {globex}".encode())]),
            ("staff", [(b"cookie", cookie)]),
        ]:
            ws, connected, _ = await connect(headers=headers)
            assert connected
            await ws.receive_json_from(TIMEOUT)  # the snapshot
            boards[name] = ws
        batch = {
            "node": "edge-1",
            "events": [
                event("started", "a2", trunk),
                event("ended", "g2", other_trunk, reason="channel_limit", final_code=503),
            ],
        }
        await live.deliver_batch(orjson.dumps(batch))
        got = {name: await ws.receive_json_from(TIMEOUT) for name, ws in boards.items()}
        assert [e["call_id"] for e in got["acme"]["events"]] == ["a2"]
        assert [e["call_id"] for e in got["globex"]["events"]] == ["g2"]
        assert got["globex"]["events"][0]["reason"] == "channel_limit"
        assert [e["call_id"] for e in got["staff"]["events"]] == ["a2", "g2"]
        assert all(g["node"] == "edge-1" for g in got.values())
        for ws in boards.values():
            assert await ws.receive_nothing(0.2)
            await ws.disconnect()

    run(scenario())


def test_an_edge_that_restarted_is_asked_again_and_its_ghost_calls_leave(edge, customer, trunk):
    key = key_for(customer)

    async def scenario():
        ws, connected, _ = await connect(headers=[(b"authorization", f"Api-Key {key}".encode())])
        assert connected
        assert [c["call_id"] for c in (await ws.receive_json_from(TIMEOUT))["calls"]] == [
            "acme-call"
        ]
        edge.calls = [c for c in edge.calls if c["call_id"] != "acme-call"]  # lost in a restart
        edge.add_call("acme-new", trunk)
        started = {"kind": "node_started", "at": 2.0, "config_version": 3}
        await live.deliver_batch(orjson.dumps({"node": "edge-1", "events": [started]}))
        update = await ws.receive_json_from(TIMEOUT)
        assert update["type"] == "edge_calls" and update["edge"] == "edge-1"
        assert [c["call_id"] for c in update["calls"]] == ["acme-new"]
        # And the client may ask for a whole snapshot at any time (its reconnect/resync).
        await ws.send_json_to({"type": "resync"})
        assert (await ws.receive_json_from(TIMEOUT))["type"] == "snapshot"
        await ws.disconnect()

    run(scenario())


def _redis_url() -> str | None:
    return settings.REDIS_URL or None


def test_batches_from_the_redis_stream_are_relayed_to_the_boards(edge, customer, trunk):
    url = _redis_url()
    if url is None:
        if os.environ.get("CI"):
            pytest.fail("REDIS_URL must be set in CI")
        pytest.skip("needs REDIS_URL (the relay reads a Redis stream)")
    key = key_for(customer)
    stream = f"tltest:live:{uuid.uuid4().hex}"
    client = redis.Redis.from_url(url)

    async def scenario():
        relay = asyncio.get_running_loop().create_task(live.relay_forever(url, stream=stream))
        try:
            ws, connected, _ = await connect(
                headers=[(b"authorization", f"Api-Key {key}".encode())]
            )
            assert connected
            await ws.receive_json_from(TIMEOUT)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + TIMEOUT
            while not await sync_to_async(client.exists)(stream):  # the relay made its group
                assert loop.time() < deadline
                await asyncio.sleep(0.05)
            batch = {"node": "edge-1", "events": [event("answered", "a3", trunk)]}
            await sync_to_async(client.xadd)(stream, {"batch": orjson.dumps(batch)})
            message = await ws.receive_json_from(TIMEOUT)
            assert [e["call_id"] for e in message["events"]] == ["a3"]
            await ws.disconnect()
        finally:
            relay.cancel()

    try:
        run(scenario())
    finally:
        client.delete(stream)
        client.close()


def test_the_snapshot_carries_the_last_15_minutes_of_cdrs_of_the_caller(
    edge, customer, trunk, other_trunk
):
    from datetime import datetime, timedelta

    from django.utils import timezone

    from billing.services import cdrs_ingest
    from edge.cdr import iso_utc
    from edge.tests.test_cdr import make_cdr, refused_cdr

    now = timezone.now().timestamp()

    def at(seconds_ago: float) -> str:
        return iso_utc(now - seconds_ago)

    answered = make_cdr(
        customer_id=customer.pk, trunk_id=trunk.pk, setup_at=at(120), ringing_at=at(119),
        answer_at=at(118), end_at=at(100),
    )  # fmt: skip
    limited = refused_cdr(
        customer_id=customer.pk, trunk_id=trunk.pk, direction="outbound", setup_at=at(60),
        end_at=at(60), final_code=503, reason="channel_limit",
    )  # fmt: skip
    theirs = refused_cdr(
        customer_id=other_trunk.customer_id, trunk_id=other_trunk.pk, setup_at=at(60),
        end_at=at(60), final_code=503, reason="cps_limit",
    )  # fmt: skip
    old = refused_cdr(customer_id=customer.pk, setup_at=at(3600), end_at=at(3600))
    cdrs_ingest(records=[answered, limited, theirs, old])
    key = key_for(customer)

    async def scenario():
        ws, connected, _ = await connect(headers=[(b"authorization", f"Api-Key {key}".encode())])
        assert connected
        history = (await ws.receive_json_from(TIMEOUT))["history"]
        await ws.disconnect()
        return history

    history = run(scenario())
    by_reason = {row["reason"]: (row["attempts"], row["answers"]) for row in history}
    assert by_reason == {"normal_clearing": (1, 1), "channel_limit": (1, 0)}  # not theirs, not old
    assert all(
        timezone.now() - datetime.fromisoformat(row["minute"]) < timedelta(minutes=16)
        for row in history
    )
