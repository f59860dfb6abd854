"""Abuse handling at the edge: pure decisions about sources, no I/O.

SIP edges on the internet are scanned and brute-forced all day. The rules:

- a known scanner's User-Agent (sipvicious, friendly-scanner, ...) is dropped without an answer;
- unauthenticated requests from one source (not in any trunk's ACL, not a carrier) are answered
  normally up to a rate; past it, only one in `answer_one_in` is answered (floods get less
  amplification), and past a higher rate the source is banned for `ban_seconds`;
- repeated digest failures from one source ban it the same way;
- a banned source's requests are dropped without an answer until the ban ends;
- a source that proves a trunk's credentials is trusted like an ACL'd one for
  `trust_seconds` (a PBX registering or calling by digest is not a flood).

Every verdict that matters comes back as a `SecurityEvent`, which the runtime logs as one
fixed-format line (`SecurityEvent.log_line`) that fail2ban can match (see docs/edge-policy.md).
Time is the `now` argument (monotonic seconds); memory is bounded (`max_sources`).
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass

__all__ = [
    "SCANNER_USER_AGENTS",
    "AbuseGuard",
    "AbuseSettings",
    "SecurityEvent",
    "Verdict",
]

# Lower-case fragments of the User-Agent values of common SIP scanners and toolkits.
SCANNER_USER_AGENTS = (
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "sip-scan",
    "sipscan",
    "vaxsipuseragent",
    "sundayddr",
    "iwar",
    "pplsip",
    "sipsak",  # a test tool: never a legitimate caller of a trunking edge
)


class Verdict(enum.Enum):
    __hash__ = object.__hash__  # identity hashing in C, as Timer's (edge/sip/timers.py)
    PROCESS = "process"  # handle the request as usual
    DROP = "drop"  # say nothing: scanner, banned, or over the answer budget


@dataclass(frozen=True, slots=True)
class AbuseSettings:
    window: float = 10.0  # seconds over which requests and failures are counted
    unauthenticated_limit: int = 20  # requests per window answered in full
    answer_one_in: int = 10  # past that, answer one request in this many
    ban_after_unauthenticated: int = 100  # requests per window that ban the source
    ban_after_auth_failures: int = 5  # digest failures per window that ban the source
    ban_seconds: float = 600.0
    trust_seconds: float = 3600.0  # after a successful digest authentication
    max_sources: int = 100_000  # sources remembered; the least recently seen go first


@dataclass(slots=True, init=False, unsafe_hash=True)
class SecurityEvent:
    """One line of the security log."""

    kind: str  # "scanner" | "flood" | "auth_failed" | "banned"
    source: str  # the source IP address
    detail: str = ""

    def __init__(self, kind: str, source: str, detail: str = "") -> None:
        self.kind = kind
        self.source = source
        self.detail = detail

    def log_line(self) -> str:
        # Fixed format, one line, the address after "src=": a fail2ban failregex is
        #   ^trunkline-security event=\S+ src=<HOST> .*$
        detail = self.detail.replace("\n", " ").replace("\r", " ")[:200]
        return f"trunkline-security event={self.kind} src={self.source} detail={detail!r}"


class _Source:
    __slots__ = ("auth_failures", "banned_until", "requests", "trusted_until", "window_start")

    def __init__(self, now: float) -> None:
        self.window_start = now
        self.requests = 0
        self.auth_failures = 0
        self.banned_until = 0.0
        self.trusted_until = 0.0


class AbuseGuard:
    """Per-source counters for unauthenticated traffic and digest failures."""

    def __init__(self, settings: AbuseSettings | None = None) -> None:
        self.settings = settings or AbuseSettings()
        self._sources: OrderedDict[str, _Source] = OrderedDict()

    def _source(self, ip: str, now: float) -> _Source:
        source = self._sources.get(ip)
        if source is None:
            source = self._sources[ip] = _Source(now)
            if len(self._sources) > self.settings.max_sources:
                self._sources.popitem(last=False)
        else:
            self._sources.move_to_end(ip)
        if now - source.window_start >= self.settings.window:
            source.window_start = now
            source.requests = 0
            source.auth_failures = 0
        return source

    def banned(self, ip: str, now: float) -> bool:
        source = self._sources.get(ip)
        return source is not None and now < source.banned_until

    def _ban(self, source: _Source, ip: str, now: float, why: str) -> SecurityEvent:
        source.banned_until = now + self.settings.ban_seconds
        return SecurityEvent("banned", ip, f"{why}; for {self.settings.ban_seconds:.0f} s")

    def unauthenticated(
        self, ip: str, user_agent: str | None, now: float
    ) -> tuple[Verdict, SecurityEvent | None]:
        """A request from a source no trunk ACL or carrier vouches for (yet)."""
        if user_agent is not None:
            agent = user_agent.lower()
            if any(fragment in agent for fragment in SCANNER_USER_AGENTS):
                return Verdict.DROP, SecurityEvent("scanner", ip, user_agent)
        source = self._source(ip, now)
        if now < source.trusted_until:
            return Verdict.PROCESS, None
        if now < source.banned_until:
            return Verdict.DROP, None
        source.requests += 1
        settings = self.settings
        if source.requests >= settings.ban_after_unauthenticated:
            return Verdict.DROP, self._ban(source, ip, now, f"{source.requests} requests")
        over = source.requests - settings.unauthenticated_limit
        if over > 0:
            event = SecurityEvent("flood", ip, f"{source.requests} requests") if over == 1 else None
            verdict = Verdict.PROCESS if over % settings.answer_one_in == 0 else Verdict.DROP
            return verdict, event
        return Verdict.PROCESS, None

    def authenticated(self, ip: str, now: float) -> None:
        """`ip` proved a trunk's credentials: its traffic is no longer counted as a flood."""
        source = self._source(ip, now)
        source.trusted_until = now + self.settings.trust_seconds
        source.banned_until = 0.0

    def auth_failed(self, ip: str, username: str, now: float) -> list[SecurityEvent]:
        """Digest credentials from `ip` were wrong (or named no user: the same to us)."""
        source = self._source(ip, now)
        source.auth_failures += 1
        events = [SecurityEvent("auth_failed", ip, f"user={username}")]
        if source.auth_failures >= self.settings.ban_after_auth_failures:
            events.append(self._ban(source, ip, now, f"{source.auth_failures} auth failures"))
        return events
