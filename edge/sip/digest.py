"""HTTP Digest authentication as SIP uses it (RFC 2617, RFC 7616, RFC 8760), both sides.

Server side: `DigestServer` issues challenges and verifies `Authorization` /
`Proxy-Authorization` values against stored HA1 values (the database never holds passwords).
Nonces are stateless: base64url(issued-at milliseconds || HMAC-SHA256(secret, issued-at ||
realm)), so any edge sharing the secret verifies any other edge's nonce without a lookup; `now`
must therefore be wall-clock seconds since the epoch, the same clock on every edge.

Trade-off of stateless nonces: nonce counts are not tracked, so a captured Authorization value
can be replayed for the same method and Request-URI until its nonce expires (`nonce_ttl`). A
short TTL bounds that window and TLS removes the capture; per-nonce `nc` tracking would need
state shared by all edges, which is exactly what these nonces avoid.

Client side: `select_challenge` picks the strongest challenge a carrier offered and
`answer_challenge` builds the credentials that answer its 401/407.

Pure functions of strings and the `now` argument: no I/O, no clock, no randomness here.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from edge.sip.errors import LocalProtocolError, RemoteProtocolError
from edge.sip.grammar import quote_string

__all__ = [
    "DEFAULT_CHALLENGE_ORDER",
    "DigestChallenge",
    "DigestCredentials",
    "DigestOutcome",
    "DigestResult",
    "DigestServer",
    "answer_challenge",
    "ha1",
    "parse_authorization",
    "parse_challenge",
    "select_challenge",
]

# Canonical algorithm name -> hashlib constructor; RFC 8760 order of preference is SHA-256 first.
_HASHES: dict[str, Callable[[bytes], hashlib._Hash]] = {
    "SHA-256": hashlib.sha256,
    "MD5": hashlib.md5,
}
_CANONICAL_ALGORITHM = {name.lower(): name for name in _HASHES}
# The order the edge offers challenges in, unless configured (EDGE_DIGEST_ALGORITHMS): MD5
# first. Most deployed PBXs and tools (SIPp, sipvicious, Asterisk's chan_sip, older phones)
# answer only the first challenge and know only MD5; offered SHA-256 first, they fail to
# authenticate. RFC 8760 clients that prefer SHA-256 find it in the second challenge.
DEFAULT_CHALLENGE_ORDER = ("MD5", "SHA-256")

_TIMESTAMP_BYTES = 8
_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{54}")  # unpadded base64url of timestamp + 32-byte MAC
_NC_RE = re.compile(r"[0-9A-Fa-f]{8}")

# One auth-param: token "=" (quoted-string / token), then a comma or the end. Unquoted values
# accept anything but space, comma and quote because real clients send e.g. `uri=sip:x@y`.
_AUTH_PARAM_RE = re.compile(
    r"""[ \t]*([!#$%&'*+\-.^_`|~0-9A-Za-z]+)[ \t]*=[ \t]*"""
    r"""(?:"((?:[^"\\]|\\.)*)"|([^\s,"]+))[ \t]*(?:,|$)"""
)
_QUOTED_PAIR_RE = re.compile(r"\\(.)")
_SCHEME_RE = re.compile(r"[ \t]*([A-Za-z][A-Za-z0-9._-]*)[ \t]+")


def _canonical_algorithm(name: str) -> str:
    try:
        return _CANONICAL_ALGORITHM[name.lower()]
    except KeyError:
        raise RemoteProtocolError(f"unsupported digest algorithm {name!r}") from None


def _hex(algorithm: str, text: str) -> str:
    return _HASHES[algorithm](text.encode()).hexdigest()


def ha1(username: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """H(username:realm:password) in lowercase hex, the value stored instead of a password."""
    canonical = _CANONICAL_ALGORITHM.get(algorithm.lower())
    if canonical is None:
        raise LocalProtocolError(f"unsupported digest algorithm {algorithm!r}")
    return _hex(canonical, f"{username}:{realm}:{password}")


# Hashed in place of a missing user's HA1 so that an unknown user costs the same work as a
# wrong password; its value needs no secrecy because the outcome ignores the comparison.
_DECOY_HA1 = {algorithm: _hex(algorithm, "unknown user") for algorithm in _HASHES}


def _response(
    algorithm: str,
    ha1_hex: str,
    *,
    nonce: str,
    method: str,
    uri: str,
    qop: str | None,
    nc: str | None,
    cnonce: str | None,
) -> str:
    ha2 = _hex(algorithm, f"{method}:{uri}")
    if qop is None:  # RFC 2069 compatibility: no qop, no nc, no cnonce
        return _hex(algorithm, f"{ha1_hex}:{nonce}:{ha2}")
    return _hex(algorithm, f"{ha1_hex}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


def _parse_auth_params(value: str, *, what: str) -> dict[str, str]:
    """Split `Digest a="x", b=y` into lowercase names and unquoted values."""
    scheme = _SCHEME_RE.match(value)
    if scheme is None or scheme.group(1).lower() != "digest":
        raise RemoteProtocolError(f"not a Digest {what}")
    params: dict[str, str] = {}
    pos = scheme.end()
    end = len(value.rstrip(" \t"))
    while pos < end:
        match = _AUTH_PARAM_RE.match(value, pos, end)
        if match is None:
            raise RemoteProtocolError(f"malformed Digest {what} near offset {pos}")
        name = match.group(1).lower()
        if name in params:
            raise RemoteProtocolError(f"duplicate {name!r} in Digest {what}")
        quoted = match.group(2)
        params[name] = match.group(3) if quoted is None else _QUOTED_PAIR_RE.sub(r"\1", quoted)
        pos = match.end()
    return params


@dataclass(frozen=True, slots=True)
class DigestCredentials:
    """The directives of an `Authorization` or `Proxy-Authorization` header value."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    qop: str | None = None
    nc: str | None = None
    cnonce: str | None = None
    opaque: str | None = None


def parse_authorization(value: str) -> DigestCredentials:
    """Parse a Digest credentials value; a malformed or unsupported one is the peer's fault."""
    params = _parse_auth_params(value, what="credentials")
    missing = [k for k in ("username", "realm", "nonce", "uri", "response") if k not in params]
    if missing:
        raise RemoteProtocolError(f"Digest credentials lack {', '.join(missing)}")
    qop = params.get("qop")
    nc = params.get("nc")
    cnonce = params.get("cnonce")
    if qop is not None:
        if qop.lower() != "auth":
            raise RemoteProtocolError(f"unsupported digest qop {qop!r}")
        if nc is None or _NC_RE.fullmatch(nc) is None or not cnonce:
            raise RemoteProtocolError("Digest qop=auth needs nc (8 hex digits) and cnonce")
        qop = "auth"
    return DigestCredentials(
        username=params["username"],
        realm=params["realm"],
        nonce=params["nonce"],
        uri=params["uri"],
        response=params["response"].lower(),
        algorithm=_canonical_algorithm(params.get("algorithm", "MD5")),
        qop=qop,
        nc=nc if qop else None,
        cnonce=cnonce if qop else None,
        opaque=params.get("opaque"),
    )


class DigestOutcome(enum.Enum):
    __hash__ = object.__hash__  # identity hashing in C, as Timer's (edge/sip/timers.py)
    OK = "ok"
    STALE = "stale"  # right answer to a nonce we issued that has expired: re-challenge stale=true
    BAD_NONCE = "bad_nonce"  # not our nonce (forged, other secret, other realm, mangled)
    WRONG_RESPONSE = "wrong_response"
    UNKNOWN_USER = "unknown_user"


@dataclass(frozen=True, slots=True)
class DigestResult:
    """What `DigestServer.verify` found.

    Answer every result that is not `accepted` with a fresh `challenge(now, stale=result.stale)`:
    `stale` is only ever true for a correct answer, so an unknown user and a wrong password get
    byte-for-byte the same kind of answer. `outcome` is for the security log and ban counters,
    never for the peer.
    """

    outcome: DigestOutcome
    username: str

    @property
    def accepted(self) -> bool:
        return self.outcome is DigestOutcome.OK

    @property
    def stale(self) -> bool:
        return self.outcome is DigestOutcome.STALE


class DigestServer:
    """Issues stateless nonces for one realm and verifies the answers to them."""

    def __init__(
        self, secret: bytes, realm: str, nonce_ttl: float = 300, *, opaque: str | None = None
    ) -> None:
        if not secret:
            raise LocalProtocolError("DigestServer needs a non-empty secret")
        self.realm = realm
        self.nonce_ttl = nonce_ttl
        self.opaque = opaque
        self._secret = secret
        self._realm_bytes = realm.encode()

    def _mac(self, issued: bytes) -> bytes:
        return hmac.new(self._secret, issued + self._realm_bytes, hashlib.sha256).digest()

    def make_nonce(self, now: float) -> str:
        if now < 0:
            raise LocalProtocolError("now must be wall-clock seconds since the epoch")
        issued = int(now * 1000).to_bytes(_TIMESTAMP_BYTES, "big")
        return base64.urlsafe_b64encode(issued + self._mac(issued)).rstrip(b"=").decode()

    def nonce_issued_at(self, nonce: str) -> float | None:
        """Seconds at which this server's secret issued `nonce`, or None if it did not."""
        if _NONCE_RE.fullmatch(nonce) is None:
            return None
        try:
            raw = base64.urlsafe_b64decode(nonce + "==")
        except binascii.Error:
            return None
        issued, mac = raw[:_TIMESTAMP_BYTES], raw[_TIMESTAMP_BYTES:]
        if not hmac.compare_digest(mac, self._mac(issued)):
            return None
        return int.from_bytes(issued, "big") / 1000

    def challenge(
        self, now: float, *, algorithms: Iterable[str] = ("SHA-256", "MD5"), stale: bool = False
    ) -> list[str]:
        """`WWW-Authenticate` / `Proxy-Authenticate` values, one per algorithm, in the given
        order (RFC 8760: the preferred one, SHA-256, first), all sharing one nonce."""
        nonce = self.make_nonce(now)
        tail = ', qop="auth"'
        if self.opaque is not None:
            tail += f", opaque={quote_string(self.opaque)}"
        if stale:
            tail += ", stale=true"
        values = []
        for name in algorithms:
            algorithm = _CANONICAL_ALGORITHM.get(name.lower())
            if algorithm is None:
                raise LocalProtocolError(f"unsupported digest algorithm {name!r}")
            values.append(
                f"Digest realm={quote_string(self.realm)}, nonce={quote_string(nonce)}, "
                f"algorithm={algorithm}{tail}"
            )
        if not values:
            raise LocalProtocolError("a challenge needs at least one algorithm")
        return values

    def verify(
        self,
        creds: DigestCredentials,
        *,
        method: str,
        ha1_lookup: Callable[[str, str], str | None],
        now: float,
    ) -> DigestResult:
        """Check `creds` sent with a request of `method`.

        `ha1_lookup(username, algorithm)` returns the stored HA1 for that user and algorithm
        ("MD5" or "SHA-256") in this server's realm, or None for an unknown user.
        """
        username = creds.username
        issued = self.nonce_issued_at(creds.nonce)
        if (
            issued is None
            or creds.realm != self.realm
            or (self.opaque is not None and creds.opaque != self.opaque)
        ):
            return DigestResult(DigestOutcome.BAD_NONCE, username)
        stored = ha1_lookup(username, creds.algorithm)
        expected = _response(
            creds.algorithm,
            _DECOY_HA1[creds.algorithm] if stored is None else stored.lower(),
            nonce=creds.nonce,
            method=method,
            uri=creds.uri,
            qop=creds.qop,
            nc=creds.nc,
            cnonce=creds.cnonce,
        )
        matches = hmac.compare_digest(expected.encode(), creds.response.encode())
        if stored is None:
            return DigestResult(DigestOutcome.UNKNOWN_USER, username)
        if not matches:
            return DigestResult(DigestOutcome.WRONG_RESPONSE, username)
        if now - issued > self.nonce_ttl:
            return DigestResult(DigestOutcome.STALE, username)
        return DigestResult(DigestOutcome.OK, username)


@dataclass(frozen=True, slots=True)
class DigestChallenge:
    """The directives of one `WWW-Authenticate` or `Proxy-Authenticate` Digest value."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False


def parse_challenge(value: str) -> DigestChallenge:
    """Parse one Digest challenge; a malformed or unsupported one is the peer's fault."""
    params = _parse_auth_params(value, what="challenge")
    if "realm" not in params or "nonce" not in params:
        raise RemoteProtocolError("Digest challenge lacks realm or nonce")
    qop = params.get("qop")
    return DigestChallenge(
        realm=params["realm"],
        nonce=params["nonce"],
        algorithm=_canonical_algorithm(params.get("algorithm", "MD5")),
        qop=() if qop is None else tuple(q.strip().lower() for q in qop.split(",")),
        opaque=params.get("opaque"),
        stale=params.get("stale", "false").lower() == "true",
    )


def select_challenge(
    values: Iterable[str], *, algorithms: Iterable[str] = ("SHA-256", "MD5")
) -> DigestChallenge:
    """The challenge to answer among a response's authenticate values: the first of our
    `algorithms` that the peer offered. Values of other schemes or algorithms are skipped."""
    offered: dict[str, DigestChallenge] = {}
    for value in values:
        try:
            parsed = parse_challenge(value)
        except RemoteProtocolError:
            continue
        offered.setdefault(parsed.algorithm, parsed)
    for name in algorithms:
        found = offered.get(_CANONICAL_ALGORITHM.get(name.lower(), name))
        if found is not None:
            return found
    raise RemoteProtocolError("no Digest challenge with an algorithm we support")


def answer_challenge(
    challenge: DigestChallenge,
    *,
    method: str,
    uri: str,
    username: str,
    cnonce: str,
    password: str | None = None,
    ha1_hex: str | None = None,
    nc: int = 1,
) -> str:
    """The `Authorization` / `Proxy-Authorization` value answering `challenge`.

    Give exactly one of `password` or `ha1_hex` (computed for the challenge's realm and
    algorithm). `cnonce` should be fresh random text; `nc` counts uses of this nonce.
    """
    algorithm = challenge.algorithm
    if password is not None and ha1_hex is None:
        secret = ha1(username, challenge.realm, password, algorithm)
    elif ha1_hex is not None and password is None:
        secret = ha1_hex
    else:
        raise LocalProtocolError("give exactly one of password or ha1_hex")
    if not 0 < nc <= 0xFFFFFFFF:
        raise LocalProtocolError("nc must fit in 8 hex digits and be positive")
    if challenge.qop and "auth" not in challenge.qop:
        raise RemoteProtocolError(f"unsupported digest qop {','.join(challenge.qop)!r}")
    qop = "auth" if challenge.qop else None
    nc_hex = f"{nc:08x}" if qop else None
    response = _response(
        algorithm,
        secret.lower(),
        nonce=challenge.nonce,
        method=method,
        uri=uri,
        qop=qop,
        nc=nc_hex,
        cnonce=cnonce if qop else None,
    )
    parts = [
        f"Digest username={quote_string(username)}",
        f"realm={quote_string(challenge.realm)}",
        f"nonce={quote_string(challenge.nonce)}",
        f"uri={quote_string(uri)}",
        f"response={quote_string(response)}",
        f"algorithm={algorithm}",
    ]
    if qop:
        parts += [f"qop={qop}", f"nc={nc_hex}", f"cnonce={quote_string(cnonce)}"]
    if challenge.opaque is not None:
        parts.append(f"opaque={quote_string(challenge.opaque)}")
    return ", ".join(parts)
