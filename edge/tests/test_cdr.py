"""Call detail records: the JSON line round trip, validation, peer text, and UTC times."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from edge.cdr import CallDetailRecord, CdrDecodeError, iso_utc, new_call_id, parse_iso_utc

SETUP = 1_795_939_200.123  # 2026-11-29T08:00:00.123Z


def make_cdr(**overrides: Any) -> CallDetailRecord:
    """An answered outbound call that failed over once; any field can be overridden."""
    fields: dict[str, Any] = {
        "edge": "edge-1",
        "call_id": new_call_id(),
        "a_call_id": "a84b4c76e66710@pbx.acme.test",
        "b_call_id": "3848276298220188511@edge-1",
        "customer_id": 7,
        "trunk_id": 12,
        "direction": "outbound",
        "caller_e164": "+14155550100",
        "callee_e164": "+442079460000",
        "caller_raw": "4155550100",
        "callee_raw": "011442079460000",
        "source_ip": "192.0.2.10",
        "source_port": 5060,
        "routes": [
            {
                "target": "sip:198.51.100.7:5060",
                "kind": "gateway",
                "status": 503,
                "reason": "failover",
            },
            {
                "target": "sip:198.51.100.8:5060",
                "kind": "gateway",
                "status": 200,
                "reason": "answered",
            },
        ],
        "answered_by": "sip:198.51.100.8:5060",
        "setup_at": iso_utc(SETUP),
        "ringing_at": iso_utc(SETUP + 1.5),
        "answer_at": iso_utc(SETUP + 4),
        "end_at": iso_utc(SETUP + 65.2),
        "duration_ms": 61_200,
        "billable_seconds": 62,
        "final_code": 200,
        "reason": "normal_clearing",
        "hangup_side": "caller",
        "codecs": ["PCMU", "PCMA"],
        "media": {
            "engine": "127.0.0.1:22222",
            "mode": "rtp",
            "packets_in": 6100,
            "bytes_in": 1_049_200,
            "packets_lost": 3,
            "jitter_ms": 4.0,
            "mos": 4.3,
        },
        "config_version": 42,
    }
    fields.update(overrides)
    return CallDetailRecord(**fields)


def refused_cdr(**overrides: Any) -> CallDetailRecord:
    """A call refused before any route was tried, from an unidentified source."""
    fields: dict[str, Any] = {
        "b_call_id": None,
        "customer_id": None,
        "trunk_id": None,
        "direction": "inbound",
        "callee_e164": None,
        "callee_raw": "s",
        "routes": [],
        "answered_by": None,
        "media": None,
        "ringing_at": None,
        "answer_at": None,
        "end_at": iso_utc(SETUP),
        "duration_ms": 0,
        "billable_seconds": 0,
        "final_code": 403,
        "reason": "acl_denied",
        "hangup_side": None,
        "codecs": [],
    }
    fields.update(overrides)
    return make_cdr(**fields)


# --- round trip -------------------------------------------------------------------------------


@pytest.mark.parametrize("record", [make_cdr(), refused_cdr()], ids=["answered", "refused"])
def test_json_round_trip(record):
    line = record.to_json()
    assert b"\n" not in line
    assert CallDetailRecord.from_json(line) == record
    assert CallDetailRecord.from_json(line + b"\n") == record


def test_json_line_is_flat_and_complete():
    record = make_cdr()
    data = orjson.loads(record.to_json())
    assert list(data) == list(CallDetailRecord.__dataclass_fields__)
    assert data["setup_at"] == "2026-11-29T08:00:00.123Z"
    assert data["routes"][0] == {
        "target": "sip:198.51.100.7:5060",
        "kind": "gateway",
        "status": 503,
        "reason": "failover",
    }


def test_newline_in_peer_text_stays_inside_the_line():
    record = make_cdr(caller_raw="evil\nline", a_call_id="x\r\ny")
    line = record.to_json()
    assert b"\n" not in line
    assert CallDetailRecord.from_json(line).caller_raw == "evil\nline"


def test_call_ids_are_unique_hex():
    ids = {new_call_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


# --- times ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wall, expected",
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (SETUP, "2026-11-29T08:00:00.123Z"),
        (1_795_939_200.1, "2026-11-29T08:00:00.100Z"),  # 0.1 is not exact in binary
        (1_795_939_200.9999, "2026-11-29T08:00:01.000Z"),  # rounds into the next second
        (1_795_939_200.0004, "2026-11-29T08:00:00.000Z"),
        (951_782_400.5, "2000-02-29T00:00:00.500Z"),
    ],
)
def test_iso_utc(wall, expected):
    assert iso_utc(wall) == expected


def test_iso_utc_agrees_with_datetime_and_keeps_none():
    assert iso_utc(None) is None
    for wall in (1.001, 1_000_000_000.5, SETUP, 2_000_000_000.999):
        assert parse_iso_utc(iso_utc(wall)) == datetime.fromtimestamp(round(wall, 3), UTC)


def test_parse_iso_utc_is_aware_utc():
    moment = parse_iso_utc("2026-11-24T08:00:00.123Z")
    assert moment == datetime(2026, 11, 24, 8, 0, 0, 123_000, tzinfo=UTC)
    assert moment.utcoffset().total_seconds() == 0


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-24T08:00:00.123+00:00",
        "2026-11-24T08:00:00Z",
        "2026-11-24T08:00:00.123456Z",
        "2026-11-24T08:00:00.123",
        "2026-11-24 08:00:00.123Z",
        "2026-13-24T08:00:00.123Z",
        "",
    ],
)
def test_parse_iso_utc_refuses_other_forms(text):
    with pytest.raises(ValueError):
        parse_iso_utc(text)


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"edge": ""}, "edge"),
        ({"edge": "x" * 101}, "edge"),
        ({"call_id": "x" * 65}, "call_id"),
        ({"a_call_id": None}, "a_call_id"),
        ({"customer_id": 0}, "customer_id"),
        ({"trunk_id": "12"}, "trunk_id"),
        ({"direction": "sideways"}, "direction"),
        ({"caller_e164": "4155550100"}, "caller_e164"),
        ({"callee_e164": "+1234567890123456"}, "callee_e164"),
        ({"source_ip": "pbx.acme.test"}, "source_ip"),
        ({"source_ip": "fe80::1%eth0"}, "source_ip"),
        ({"source_port": 65536}, "source_port"),
        ({"source_port": True}, "source_port"),
        ({"routes": {"target": "x"}}, "routes"),
        ({"routes": [{"target": "x", "kind": "gateway", "status": 200}]}, "routes[0]"),
        (
            {"routes": [{"target": "x", "kind": "gateway", "status": 99, "reason": "answered"}]},
            "routes[0].status",
        ),
        (
            {"routes": [{"target": "x", "kind": "gateway", "status": None, "reason": "Timed out"}]},
            "routes[0].reason",
        ),
        ({"setup_at": "2026-11-24T08:00:00"}, "setup_at"),
        ({"end_at": None}, "end_at"),
        ({"answer_at": 1_795_939_204.0}, "answer_at"),
        ({"duration_ms": -1, "billable_seconds": 0}, "duration_ms"),
        ({"billable_seconds": 61}, "billable_seconds"),
        ({"final_code": 180}, "final_code"),
        ({"final_code": 700}, "final_code"),
        ({"reason": "Normal Clearing"}, "reason"),
        ({"reason": ""}, "reason"),
        ({"hangup_side": "both"}, "hangup_side"),
        ({"codecs": "PCMU"}, "codecs"),
        ({"media": []}, "media"),
        ({"media": {"packets_in": -1}}, "media.packets_in"),
        ({"media": {"packets_in": 1.5}}, "media.packets_in"),
        ({"media": {"mos": "4.1"}}, "media.mos"),
        ({"media": {"colour": "blue"}}, "media"),
        ({"config_version": -1}, "config_version"),
    ],
)
def test_construction_refuses_what_the_edge_decides_wrongly(overrides, field):
    with pytest.raises(ValueError, match="^" + re.escape(field)):
        make_cdr(**overrides)


def test_unanswered_call_has_no_duration_nor_answerer():
    with pytest.raises(ValueError, match="unanswered"):
        refused_cdr(duration_ms=1000, billable_seconds=1)
    with pytest.raises(ValueError, match="unanswered"):
        refused_cdr(answered_by="sip:198.51.100.8")
    with pytest.raises(ValueError, match="answered_by is required"):
        make_cdr(answered_by=None)


@pytest.mark.parametrize("duration_ms, billable", [(0, 0), (1, 1), (999, 1), (1000, 1), (1001, 2)])
def test_billable_seconds_round_up(duration_ms, billable):
    assert make_cdr(duration_ms=duration_ms, billable_seconds=billable).billable_seconds == billable


def test_times_are_not_checked_for_order():
    # A wall-clock step during the call must not cost the call its record.
    record = make_cdr(end_at=iso_utc(SETUP - 3600))
    assert CallDetailRecord.from_json(record.to_json()) == record


def test_peer_text_is_cleaned_not_refused():
    record = make_cdr(
        a_call_id="c" * 300,
        caller_raw="41\x0055",
        callee_raw="\udcff+44",
        answered_by="sip:" + "h" * 300,
        codecs=["opus" * 20],
        routes=[
            {"target": "sip:\x00x", "kind": "registration", "status": 200, "reason": "answered"}
        ],
    )
    assert len(record.a_call_id) == 255
    assert record.caller_raw == "4155"
    assert record.callee_raw == "?+44"
    assert len(record.answered_by) == 255
    assert record.codecs == ["opus" * 8]
    assert record.routes[0]["target"] == "sip:x"
    assert CallDetailRecord.from_json(record.to_json()) == record


def test_routes_are_copied_not_shared():
    routes = [{"target": "sip:a", "kind": "gateway", "status": 200, "reason": "answered"}]
    record = make_cdr(routes=routes, answered_by="sip:a")
    routes[0]["reason"] = "changed"
    assert record.routes[0]["reason"] == "answered"


# --- decoding ---------------------------------------------------------------------------------


def _line(**changes: Any) -> bytes:
    data = orjson.loads(make_cdr().to_json())
    for key, value in changes.items():
        if value is ...:
            del data[key]
        else:
            data[key] = value
    return orjson.dumps(data)


@pytest.mark.parametrize(
    "line, message",
    [
        (b"", "not JSON"),
        (b'{"edge": "edge-1", "call_', "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b"\x00\x00\x00\x00", "not JSON"),
        (_line(reason=...), "missing fields: reason"),
        (_line(colour="blue"), "unknown fields: colour"),
        (_line(final_code="200"), "final_code"),
        (_line(final_code=200.0), "final_code"),
        (_line(setup_at=1_795_939_200), "setup_at"),
        (_line(billable_seconds=1), "billable_seconds"),
        (_line(routes=[["sip:x", "gateway", 200, "answered"]]), "routes[0]"),
        (_line(media={"packets_in": "many"}), "media.packets_in"),
    ],
)
def test_from_json_refuses_corrupt_lines(line, message):
    with pytest.raises(CdrDecodeError) as caught:
        CallDetailRecord.from_json(line)
    assert message in str(caught.value)


def test_a_line_from_before_media_was_recorded_still_reads():
    record = CallDetailRecord.from_json(_line(media=...))
    assert record.media is None
    assert orjson.loads(record.to_json())["media"] is None


@pytest.mark.parametrize("status", [200.0, "200", True])
def test_a_route_seen_valid_does_not_pass_with_another_type(status):
    # Valid routes are remembered by value; a value equal to a valid one (200.0 == 200) but of
    # another type must still be refused, however often the valid one was seen first.
    line = make_cdr().to_json()
    for _ in range(3):
        CallDetailRecord.from_json(line)
    data = orjson.loads(line)
    data["routes"][1]["status"] = status
    with pytest.raises(CdrDecodeError, match=r"routes\[1\]\.status"):
        CallDetailRecord.from_json(orjson.dumps(data))


def test_a_route_whose_target_was_cleaned_is_cleaned_every_time():
    route = {"target": "sip:\x00x", "kind": "gateway", "status": 200, "reason": "answered"}
    line = _line(routes=[route], answered_by="sip:x")
    for _ in range(3):
        assert CallDetailRecord.from_json(line).routes[0]["target"] == "sip:x"
