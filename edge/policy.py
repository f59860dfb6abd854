"""Call admission: pure decisions, each refusal with a machine-readable reason.

`admit_outbound`, `admit_inbound` and `admit_register` take what the edge knows about a request
(normalised numbers, the trunk's policy, the customer's state, current usage) and return
`Admit` or `Reject(code, reason, phrase)`. `REFUSALS` is the one table from reason to SIP
answer; the reason lands on the CDR and in the metrics. `docs/edge-policy.md` is its prose form,
with the order of the checks.

Nothing here does I/O, reads a clock or counts anything. Limits are not part of admission:
once a call is admitted here, the b2bua asks for a slot (`edge.limits.AcquireSlot`) and the
counters decide, once; `limit_refusal` names the limit a refused slot broke.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.config import CustomerState, NumberRoute, TrunkPolicy

__all__ = [
    "ADMIT",
    "REFUSALS",
    "Admit",
    "Decision",
    "OutboundCall",
    "Reject",
    "Usage",
    "admit_inbound",
    "admit_outbound",
    "admit_register",
    "limit_refusal",
    "reason_header",
    "reject",
]

# reason -> (SIP status, reason phrase). One reason per meaning; several reasons may share a
# status. Keep docs/edge-policy.md in step.
REFUSALS: dict[str, tuple[int, str]] = {
    "acl_denied": (403, "Forbidden"),
    "auth_failed": (403, "Forbidden"),
    "customer_suspended": (403, "Forbidden"),
    "no_credit": (402, "Payment Required"),
    "trunk_suspended": (403, "Forbidden"),
    "invalid_number": (484, "Address Incomplete"),
    "destination_blocked": (403, "Forbidden"),
    "destination_not_allowed": (403, "Forbidden"),
    "caller_id_denied": (403, "Forbidden"),
    "channel_limit": (503, "Service Unavailable"),
    "cps_limit": (503, "Service Unavailable"),
    "unknown_number": (404, "Not Found"),
    # Inbound: the DID is ours but nothing can take the call now (no trunk, no origination
    # URI, no registered contact). 480 tells the carrier the callee is unavailable.
    "no_route": (480, "Temporarily Unavailable"),
    # Outbound: no gateway takes the destination. 503 invites the PBX to try another trunk.
    "no_gateway": (503, "Service Unavailable"),
    "too_many_hops": (483, "Too Many Hops"),
    "draining": (503, "Service Unavailable"),
    "registration_not_allowed": (403, "Forbidden"),
    "interval_too_brief": (423, "Interval Too Brief"),
    # The trunk anchors media and no rtpengine answered (none configured, all down, or it
    # refused the session): refused rather than connected without audio.
    "media_unavailable": (503, "Service Unavailable"),
    # The trunk requires SRTP on the customer's side and the PBX's offer has none.
    "srtp_required": (488, "Not Acceptable Here"),
}


@dataclass(frozen=True, slots=True)
class Admit:
    """The call (or registration) may proceed."""


@dataclass(frozen=True, slots=True)
class Reject:
    """Answer `code phrase`; record `reason` (a key of REFUSALS) on the CDR."""

    code: int
    reason: str
    phrase: str


Decision = Admit | Reject

ADMIT = Admit()
# Decisions are values: one shared instance per reason, nothing allocated per call.
_REJECTS: dict[str, Reject] = {
    reason: Reject(code, reason, phrase) for reason, (code, phrase) in REFUSALS.items()
}


def reject(reason: str) -> Reject:
    """The refusal for `reason`; a KeyError means a reason missing from REFUSALS."""
    return _REJECTS[reason]


def reason_header(refusal: Reject) -> tuple[str, str]:
    """The RFC 3326 `Reason` header that tells an identified caller's PBX why it was refused,
    e.g. `Reason: SIP ;cause=403 ;text="destination_blocked"`. Only for callers the edge has
    identified (a trunk by ACL or digest, a carrier gateway): others learn nothing more."""
    return ("Reason", f'SIP ;cause={refusal.code} ;text="{refusal.reason}"')


@dataclass(slots=True, init=False, unsafe_hash=True)
class Usage:
    """A trunk's counters at decision time, from `edge.limits`."""

    active_calls: int
    cps_available: bool

    def __init__(self, active_calls: int, cps_available: bool) -> None:
        self.active_calls = active_calls
        self.cps_available = cps_available


@dataclass(slots=True, init=False, unsafe_hash=True)
class OutboundCall:
    """What admission needs to know of a call from a trunk.

    `callee_e164` None means the dialled string is not a number; `caller_e164` None means no
    usable caller-ID. `callee_region` is only read when the trunk allows countries and no
    allowed prefix matched, so it may be left None for trunks without countries.
    """

    callee_e164: str | None
    caller_e164: str | None
    callee_region: str | None = None

    def __init__(
        self,
        callee_e164: str | None,
        caller_e164: str | None,
        callee_region: str | None = None,
    ) -> None:
        self.callee_e164 = callee_e164
        self.caller_e164 = caller_e164
        self.callee_region = callee_region


def limit_refusal(trunk: TrunkPolicy, usage: Usage, *, count_cps: bool = True) -> Reject | None:
    """The limit `usage` breaks, channels first; None if the call fits."""
    if usage.active_calls >= trunk.max_channels:
        return _REJECTS["channel_limit"]
    if count_cps and not usage.cps_available:
        return _REJECTS["cps_limit"]
    return None


def admit_outbound(
    call: OutboundCall,
    trunk: TrunkPolicy,
    customer: CustomerState,
    customer_numbers: frozenset[str],
) -> Decision:
    """Admit a call from `trunk` or say why not; checks in the documented order.

    Limits come after (`edge.limits`), so that a call refused for another reason is not
    counted as one that hit a limit, and only admitted calls take a channel and a token.
    """
    if not customer.active:
        return _REJECTS["customer_suspended"]
    if customer.out_of_credit:
        return _REJECTS["no_credit"]
    if not trunk.active:
        return _REJECTS["trunk_suspended"]
    callee = call.callee_e164
    if callee is None:
        return _REJECTS["invalid_number"]
    if trunk.blocked_prefixes and callee.startswith(trunk.blocked_prefixes):
        return _REJECTS["destination_blocked"]
    if (trunk.allowed_prefixes or trunk.allowed_countries) and not (
        callee.startswith(trunk.allowed_prefixes)
        or (call.callee_region is not None and call.callee_region in trunk.allowed_countries)
    ):
        return _REJECTS["destination_not_allowed"]
    if trunk.caller_id_policy == "customer_numbers" and call.caller_e164 not in customer_numbers:
        return _REJECTS["caller_id_denied"]
    return ADMIT


def admit_inbound(
    number: NumberRoute | None,
    trunk: TrunkPolicy | None,
    customer: CustomerState | None,
) -> Decision:
    """Admit a carrier's call to a DID or say why not.

    Then (`edge.limits`) inbound calls take one of the trunk's channels, but no CPS token: the
    rate is the callers' doing, not the customer's, and the channel limit already protects the
    PBX. A customer out of credit still receives calls (numbers are charged monthly).
    """
    if number is None or customer is None:
        return _REJECTS["unknown_number"]
    if not customer.active:
        return _REJECTS["customer_suspended"]
    if trunk is None:
        return _REJECTS["no_route"]
    if not trunk.active:
        return _REJECTS["trunk_suspended"]
    return ADMIT


def admit_register(trunk: TrunkPolicy, customer: CustomerState) -> Decision:
    """May this (authenticated) trunk register a contact?"""
    if not customer.active:
        return _REJECTS["customer_suspended"]
    if not trunk.active:
        return _REJECTS["trunk_suspended"]
    if not trunk.registration_allowed:
        return _REJECTS["registration_not_allowed"]
    return ADMIT
