"""Media anchoring as the call machine asks for it: rtpengine operations out, their answers in.

A call on a trunk that anchors media (edge.config `media_mode`) has a media session in an
rtpengine. The core never talks to rtpengine: like a limit slot (edge/limits.py), it emits an
operation and later takes its answer as an input of the call machine (`B2bua.media_decided`):

    MediaOffer(call_id, op, leg, sdp, params)   -> MediaReady(call_id, op, sdp, engine)
    MediaAnswer(call_id, op, leg, sdp, params)  -> MediaReady(...)          or MediaFailed(...)
    MediaDelete(call_id)                        -> MediaStats(call_id, summary)

`op` numbers a call's operations: an answer to an operation the call no longer waits for (a
183's rewrite overtaken by the 200) is stale and ignored. The runtime (edge/runtime/
rtpengine.py) carries them over rtpengine's ng protocol: it adds the command, the call-id, the
tags and a cookie to `params`, and answers every operation exactly once (a timeout is a
`MediaFailed`).

In rtpengine's terms the session's call-id is the edge's call id (unique per edge), the caller's
leg is tag "a" and the callee's leg tag "b"; an offer names its sender's tag as from-tag, an
answer the offerer's as from-tag and the answerer's as to-tag.

Pure data and pure functions: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

from edge.cdr import MediaSummary
from edge.config import TrunkPolicy
from edge.sip.errors import RemoteProtocolError
from edge.sip.sdp import SessionDescription

__all__ = [
    "MediaAnswer",
    "MediaDecision",
    "MediaDelete",
    "MediaFailed",
    "MediaOffer",
    "MediaReady",
    "MediaStats",
    "anchors",
    "answer_params",
    "media_address",
    "offer_params",
    "offers_srtp",
    "summary_from_query",
]

Params: TypeAlias = dict[str, Any]
LEGS = ("a", "b")
# Every operation rewrites both addresses in the SDP (topology hiding) and drops ICE candidates
# (the media goes through rtpengine, never around it). rtpengine learns each side's real
# address from the packets it receives (symmetric RTP, or latching: a PBX behind NAT gets its
# audio back where it sends from, whatever private address its SDP names) unless told
# "asymmetric"; it has no "symmetric" flag (it logs one as unknown, on every operation).
_COMMON: Params = {
    "replace": ["origin", "session-connection"],
    "ICE": "remove",
    "DTLS": "off",
}


@dataclass(frozen=True, slots=True)
class MediaOffer:
    """Core output: have rtpengine take `sdp` (sent by `leg`, "a" or "b") as an offer and
    rewrite it for the other leg, then answer `B2bua.media_decided`. The call's first offer
    (`op` 1) creates the session on an rtpengine the runtime picks; later ones go to that one."""

    call_id: str
    op: int
    leg: str
    sdp: bytes
    params: Params


@dataclass(frozen=True, slots=True)
class MediaAnswer:
    """Core output: `sdp` is `leg`'s answer to the other leg's offer; rewrite it for the
    offerer."""

    call_id: str
    op: int
    leg: str
    sdp: bytes
    params: Params


@dataclass(frozen=True, slots=True)
class MediaDelete:
    """Core output: the call is over; delete its media session (answer: `MediaStats`)."""

    call_id: str


@dataclass(frozen=True, slots=True)
class MediaReady:
    """Core input: the SDP rtpengine made of operation `op`, and which rtpengine holds the
    session (host:port)."""

    call_id: str
    op: int
    sdp: bytes
    engine: str


@dataclass(frozen=True, slots=True)
class MediaFailed:
    """Core input: operation `op` failed (no rtpengine reachable, a timeout, or an error
    answer); `reason` says which, for the log."""

    call_id: str
    op: int
    reason: str


@dataclass(frozen=True, slots=True)
class MediaStats:
    """Core input: the session is deleted; what rtpengine counted (None: it could not say)."""

    call_id: str
    summary: MediaSummary | None


MediaDecision: TypeAlias = MediaReady | MediaFailed


def anchors(trunk: TrunkPolicy, engines_configured: bool) -> bool:
    """Whether calls on `trunk` go through rtpengine (`auto`: when this edge has one)."""
    mode = trunk.media_mode
    return mode == "anchor" or (mode == "auto" and engines_configured)


def offers_srtp(sdp: bytes) -> bool:
    """Whether an SDP offers SRTP: an RTP/SAVP(F) profile, or crypto attributes (RFC 8643's
    opportunistic SRTP offers RTP/AVP with a=crypto)."""
    return b"RTP/SAVP" in sdp or b"a=crypto:" in sdp


# The SDES suites offered: AES_CM_128_HMAC_SHA1_80 and _32, which every SRTP endpoint knows.
# rtpengine's default list (a dozen suites) makes an INVITE too large for UDP (over 1,300
# bytes, RFC 3261 18.1.1); "no-" is understood by every rtpengine version ("only-" is not).
SDES_SUITES = [
    f"no-{suite}"
    for suite in (
        "AEAD_AES_256_GCM", "AEAD_AES_128_GCM", "AES_256_CM_HMAC_SHA1_80",
        "AES_256_CM_HMAC_SHA1_32", "AES_192_CM_HMAC_SHA1_80", "AES_192_CM_HMAC_SHA1_32",
        "F8_128_HMAC_SHA1_80", "F8_128_HMAC_SHA1_32", "NULL_HMAC_SHA1_80", "NULL_HMAC_SHA1_32",
    )
]  # fmt: skip


def _customer_protocol(trunk: TrunkPolicy, params: Params) -> Params:
    """What the customer's side gets, written into `params` (towards that side)."""
    srtp = trunk.srtp
    if srtp == "required":
        params["transport-protocol"] = "RTP/SAVP"
        params["SDES"] = SDES_SUITES
    elif srtp == "offered":
        params["transport-protocol"] = "RTP/AVP"
        params["flags"] = ["OSRTP-offer"]
        params["SDES"] = SDES_SUITES
    else:
        params["transport-protocol"] = "RTP/AVP"
    return params


def offer_params(
    trunk: TrunkPolicy,
    *,
    to_customer: bool,
    customer_srtp: bool | None,
    carrier_srtp: bool = False,
) -> Params:
    """ng parameters of an offer going to the customer's side (`to_customer`) or the
    carrier's. Carriers get plain RTP unless their gateway asks for SRTP (`carrier_srtp`). A
    re-offer to the customer keeps what its first answer chose (`customer_srtp`; None on the
    first offer)."""
    params: Params = {**_COMMON}
    if not to_customer:
        params["transport-protocol"] = "RTP/SAVP" if carrier_srtp else "RTP/AVP"
    elif customer_srtp is None:
        _customer_protocol(trunk, params)
    else:
        params["transport-protocol"] = "RTP/SAVP" if customer_srtp else "RTP/AVP"
    return params


def answer_params() -> Params:
    """ng parameters of an answer: rtpengine answers in the profile the offerer offered."""
    return {**_COMMON}


def media_address(sdp: bytes) -> str | None:
    """host:port of the first audio stream of `sdp` (what a party is told to send to)."""
    try:
        description = SessionDescription.parse(sdp)
    except RemoteProtocolError:
        return None
    for media in description.media:
        if media.media_type == "audio":
            host = media.connection_address or description.connection_address
            return f"{host}:{media.port}" if host else None
    return None


def summary_from_query(answer: dict[str, Any], engine: str) -> MediaSummary:
    """A `MediaSummary` from rtpengine's statistics (its answer to `delete` with a from-tag,
    or to `query`, as JSON decodes it): packets and bytes it received (`totals`) and sent (per
    stream), loss, and jitter/MOS per SSRC where it measured them."""
    summary: MediaSummary = {"engine": engine}  # the core adds "mode"
    totals = answer.get("totals")
    rtp = totals.get("RTP") if isinstance(totals, dict) else None
    if isinstance(rtp, dict):
        summary["packets_in"] = _count(rtp.get("packets"))
        summary["bytes_in"] = _count(rtp.get("bytes"))
    packets_out = bytes_out = 0
    tags = answer.get("tags")
    for tag in tags.values() if isinstance(tags, dict) else ():
        for medium in tag.get("medias", []) if isinstance(tag, dict) else ():
            for stream in medium.get("streams", []) if isinstance(medium, dict) else ():
                # What rtpengine sent on a stream (newer versions); what it received is in
                # "totals" above.
                sent = stream.get("stats_out") if isinstance(stream, dict) else None
                if isinstance(sent, dict):
                    packets_out += _count(sent.get("packets"))
                    bytes_out += _count(sent.get("bytes"))
    if packets_out:
        summary["packets_out"] = packets_out
        summary["bytes_out"] = bytes_out
    lost = 0
    jitter: list[float] = []
    mos: list[float] = []
    ssrcs = answer.get("SSRC")
    for entry in ssrcs.values() if isinstance(ssrcs, dict) else ():
        if not isinstance(entry, dict):
            continue
        for key in ("average MOS", "lowest MOS"):
            value = entry.get(key)
            if isinstance(value, dict) and isinstance(value.get("MOS"), int):
                mos.append(value["MOS"] / 10)  # rtpengine sends MOS times ten
                if isinstance(value.get("jitter"), int):
                    jitter.append(float(value["jitter"]))
                if isinstance(value.get("packet loss"), int):
                    lost = max(lost, value["packet loss"])
                break
    if ssrcs:
        summary["packets_lost"] = lost
    if jitter:
        summary["jitter_ms"] = max(jitter)
    if mos:
        summary["mos"] = min(mos)
    return summary


def _count(value: Any) -> int:
    return value if type(value) is int and value >= 0 else 0
