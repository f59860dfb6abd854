"""SIP message layer throughput: edge.sip against the sipmessage package, in the same run.

For a realistic mix of one call's messages (INVITE, 100, 180, 200, ACK, BYE) and a REGISTER,
each library parses the bytes, reads what a proxy reads, and serialises the message. What is
read: every Via, the From and To tags, Call-ID, CSeq, Max-Forwards, and the Contact and
Route URIs. sipmessage parses every URI as soon as it reads an address (its API offers no
other way); edge.sip parses a URI when it is used, so the From and To URIs, which a proxy
never uses, stay unparsed. Two workloads:

- read: the message is serialised unchanged. edge.sip returns the bytes it received (that is
  its design); sipmessage rebuilds them (it keeps no raw form).
- relay: a Via is pushed on top before serialising, so both rebuild the message.

The workloads take turns, round after round, and each keeps its best round, so that load from
other processes falls on all of them alike. The last line is the ratio of our throughput to
sipmessage's on the read workload, the one the brief defines (parse, read, serialise).
Run: .venv/bin/python bench/sip_parse.py
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sipmessage

from edge.sip import Request, Response, parse_message
from edge.sip.tests.samples import (
    ACK,
    BYE,
    INVITE,
    INVITE_OK,
    REGISTER,
    RINGING,
    TRYING,
)

MIX = (INVITE, TRYING, RINGING, INVITE_OK, ACK, BYE, REGISTER)
EDGE_VIA = "SIP/2.0/UDP 198.51.100.5:5060;branch=z9hG4bKbench42"
ROUNDS = 25
PASSES_PER_ROUND = 100

ProxyRead = tuple[Any, ...]


def edge_proxy_read(message: Request | Response) -> ProxyRead:
    return (
        message.vias,
        message.from_tag,
        message.to_tag,
        message.call_id,
        message.cseq,
        message.max_forwards,
        [contact.uri for contact in message.contact],
        [route.uri for route in message.routes],
    )


def sipmessage_proxy_read(message: sipmessage.Message) -> ProxyRead:
    return (
        message.via,
        message.from_address.parameters.get("tag"),
        message.to_address.parameters.get("tag"),
        message.call_id,
        message.cseq,
        message.max_forwards,
        [contact.uri for contact in message.contact],
        [route.uri for route in message.route],
    )


def edge_read(data: bytes) -> tuple[ProxyRead, bytes]:
    message = parse_message(data)
    return edge_proxy_read(message), bytes(message)


def sipmessage_read(data: bytes) -> tuple[ProxyRead, bytes]:
    message = sipmessage.Message.parse(data)
    return sipmessage_proxy_read(message), bytes(message)


def edge_relay(data: bytes) -> tuple[ProxyRead, bytes]:
    message = parse_message(data)
    read = edge_proxy_read(message)
    message.headers.add("Via", EDGE_VIA, first=True)
    return read, bytes(message)


def sipmessage_relay(data: bytes) -> tuple[ProxyRead, bytes]:
    message = sipmessage.Message.parse(data)
    read = sipmessage_proxy_read(message)
    message.headers.setlist("Via", [EDGE_VIA, *message.headers.getlist("Via")])
    return read, bytes(message)


def check_equivalence() -> None:
    """Both libraries must read the same values, or the comparison means nothing."""
    for data in MIX:
        ours, wire = edge_relay(data)
        theirs, _ = sipmessage_relay(data)
        vias, from_tag, to_tag, call_id, (sequence, method), max_forwards, contacts, routes = ours
        assert [str(via) for via in vias] == [str(via) for via in theirs[0]]
        assert (from_tag, to_tag, call_id) == theirs[1:4]
        assert f"{sequence} {method}" == str(theirs[4])
        assert max_forwards == theirs[5]
        assert [str(uri) for uri in contacts + routes] == [str(u) for u in theirs[6] + theirs[7]]
        assert parse_message(wire).top_via.branch == "z9hG4bKbench42"


Workload = Callable[[bytes], tuple[ProxyRead, bytes]]
WORKLOADS: dict[str, Workload] = {
    "edge.sip read": edge_read,
    "sipmessage read": sipmessage_read,
    "edge.sip relay": edge_relay,
    "sipmessage relay": sipmessage_relay,
}


def best_messages_per_second() -> dict[str, float]:
    best_seconds = dict.fromkeys(WORKLOADS, float("inf"))
    for _ in range(ROUNDS):
        for name, workload in WORKLOADS.items():
            started = time.perf_counter()
            for _ in range(PASSES_PER_ROUND):
                for data in MIX:
                    workload(data)
            best_seconds[name] = min(best_seconds[name], time.perf_counter() - started)
    return {name: PASSES_PER_ROUND * len(MIX) / seconds for name, seconds in best_seconds.items()}


def main() -> None:
    check_equivalence()
    rates = best_messages_per_second()
    for name, rate in rates.items():
        print(f"{name:18} {rate:10.0f} messages/s")
    print(f"relay ratio: {rates['edge.sip relay'] / rates['sipmessage relay']:.2f}")
    ratio = rates["edge.sip read"] / rates["sipmessage read"]
    print(f"sip_parse_ratio_vs_sipmessage={ratio:.2f}")


if __name__ == "__main__":
    main()
