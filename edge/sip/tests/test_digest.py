"""Digest authentication: published vectors, client/server round trips, and the failure cases."""

from __future__ import annotations

import hashlib

import pytest

from edge.sip.digest import (
    DigestChallenge,
    DigestCredentials,
    DigestOutcome,
    DigestServer,
    answer_challenge,
    ha1,
    parse_authorization,
    parse_challenge,
    select_challenge,
)
from edge.sip.errors import LocalProtocolError, RemoteProtocolError

NOW = 1_700_000_000.0
REALM = "sip.trunkline.test"
SECRET = b"edge-shared-secret"


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_rfc2617_mufasa_vector() -> None:
    # RFC 2617 section 3.5; the expected value is also derived here by hand from the formula.
    challenge = DigestChallenge(
        realm="testrealm@host.com",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        qop=("auth", "auth-int"),
        opaque="5ccc069c403ebaf9f0171e9517f40e41",
    )
    value = answer_challenge(
        challenge,
        method="GET",
        uri="/dir/index.html",
        username="Mufasa",
        password="Circle Of Life",
        cnonce="0a4f113b",
    )
    independent = _md5(
        f"{_md5('Mufasa:testrealm@host.com:Circle Of Life')}:"
        f"dcd98b7102dd2f0e8b11d0f600bfb0c093:00000001:0a4f113b:auth:"
        f"{_md5('GET:/dir/index.html')}"
    )
    assert independent == "6629fae49393a05397450978507c4ef1"
    creds = parse_authorization(value)
    assert creds.response == independent
    assert (creds.qop, creds.nc, creds.cnonce) == ("auth", "00000001", "0a4f113b")
    assert creds.opaque == "5ccc069c403ebaf9f0171e9517f40e41"


@pytest.mark.parametrize(
    ("algorithm", "hash_hex", "published"),
    [
        ("MD5", _md5, "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", _sha256, "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_section_3_9_1_vectors(algorithm: str, hash_hex, published: str) -> None:
    nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
    cnonce = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
    realm = "http-auth@example.org"
    challenge = parse_challenge(
        f'Digest realm="{realm}", qop="auth, auth-int", algorithm={algorithm}, '
        f'nonce="{nonce}", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )
    independent = hash_hex(
        f"{hash_hex(f'Mufasa:{realm}:Circle of Life')}:{nonce}:00000001:{cnonce}:auth:"
        f"{hash_hex('GET:/dir/index.html')}"
    )
    assert independent == published
    value = answer_challenge(
        challenge,
        method="GET",
        uri="/dir/index.html",
        username="Mufasa",
        ha1_hex=ha1("Mufasa", realm, "Circle of Life", algorithm),
        cnonce=cnonce,
    )
    assert parse_authorization(value).response == published


def test_ha1_is_the_hex_hash_of_user_realm_password() -> None:
    assert ha1("alice", REALM, "pw") == _md5(f"alice:{REALM}:pw")
    assert ha1("alice", REALM, "pw", "sha-256") == _sha256(f"alice:{REALM}:pw")
    with pytest.raises(LocalProtocolError):
        ha1("alice", REALM, "pw", "SHA-512-256")


def _store(password: str = "s3cret") -> dict[tuple[str, str], str]:
    return {(alg, "alice"): ha1("alice", REALM, password, alg) for alg in ("MD5", "SHA-256")}


def _lookup(store: dict[tuple[str, str], str]):
    return lambda username, algorithm: store.get((algorithm, username))


def _authorize(
    server: DigestServer,
    now: float,
    *,
    algorithm: str,
    username: str = "alice",
    password: str = "s3cret",
    method: str = "INVITE",
) -> DigestCredentials:
    challenge = select_challenge(server.challenge(now), algorithms=(algorithm,))
    value = answer_challenge(
        challenge,
        method=method,
        uri="sip:+15551234567@sip.trunkline.test",
        username=username,
        password=password,
        cnonce="c0ffee",
    )
    return parse_authorization(value)


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_round_trip_client_to_server(algorithm: str) -> None:
    server = DigestServer(SECRET, REALM)
    creds = _authorize(server, NOW, algorithm=algorithm)
    assert creds.algorithm == algorithm
    result = server.verify(creds, method="INVITE", ha1_lookup=_lookup(_store()), now=NOW + 10)
    assert result.accepted
    assert result.username == "alice"


def test_any_edge_with_the_same_secret_verifies_the_nonce() -> None:
    creds = _authorize(DigestServer(SECRET, REALM), NOW, algorithm="SHA-256")
    other_edge = DigestServer(SECRET, REALM)
    result = other_edge.verify(creds, method="INVITE", ha1_lookup=_lookup(_store()), now=NOW)
    assert result.outcome is DigestOutcome.OK


def test_challenge_lists_sha256_first_with_qop_auth() -> None:
    values = DigestServer(SECRET, REALM, opaque="op").challenge(NOW)
    assert [parse_challenge(v).algorithm for v in values] == ["SHA-256", "MD5"]
    first = parse_challenge(values[0])
    assert first.qop == ("auth",)
    assert first.opaque == "op"
    assert not first.stale
    assert parse_challenge(values[1]).nonce == first.nonce
    assert parse_challenge(DigestServer(SECRET, REALM).challenge(NOW, stale=True)[0]).stale


def test_challenge_rejects_unknown_or_no_algorithm() -> None:
    server = DigestServer(SECRET, REALM)
    with pytest.raises(LocalProtocolError):
        server.challenge(NOW, algorithms=("SHA-512",))
    with pytest.raises(LocalProtocolError):
        server.challenge(NOW, algorithms=())


def test_expired_nonce_with_right_answer_is_stale() -> None:
    server = DigestServer(SECRET, REALM, nonce_ttl=300)
    creds = _authorize(server, NOW, algorithm="SHA-256")
    lookup = _lookup(_store())
    assert server.verify(creds, method="INVITE", ha1_lookup=lookup, now=NOW + 300).accepted
    result = server.verify(creds, method="INVITE", ha1_lookup=lookup, now=NOW + 300.01)
    assert result.outcome is DigestOutcome.STALE
    assert result.stale
    assert not result.accepted


def test_expired_nonce_with_wrong_answer_is_not_stale() -> None:
    # stale=true tells the client its password was right; never say so for a wrong one.
    server = DigestServer(SECRET, REALM, nonce_ttl=300)
    creds = _authorize(server, NOW, algorithm="MD5", password="guess")
    result = server.verify(creds, method="INVITE", ha1_lookup=_lookup(_store()), now=NOW + 900)
    assert result.outcome is DigestOutcome.WRONG_RESPONSE
    assert not result.stale


def _with(creds: DigestCredentials, **changes: str | None) -> DigestCredentials:
    fields = {name: getattr(creds, name) for name in DigestCredentials.__dataclass_fields__}
    return DigestCredentials(**{**fields, **changes})


@pytest.mark.parametrize(
    "tamper",
    [
        lambda n: n[:-1] + ("A" if n[-1] != "A" else "B"),  # MAC altered
        lambda n: ("B" if n[0] != "B" else "C") + n[1:],  # timestamp altered
        lambda n: n[:-1],  # truncated
        lambda n: n[:-2] + "+/",  # characters outside base64url
        lambda n: "dcd98b7102dd2f0e8b11d0f600bfb0c093",  # someone else's nonce
    ],
)
def test_tampered_nonce_is_bad_nonce(tamper) -> None:
    server = DigestServer(SECRET, REALM)
    creds = _authorize(server, NOW, algorithm="MD5")
    forged = _with(creds, nonce=tamper(creds.nonce))
    result = server.verify(forged, method="INVITE", ha1_lookup=_lookup(_store()), now=NOW)
    assert result.outcome is DigestOutcome.BAD_NONCE


def test_nonce_from_another_secret_realm_or_opaque_is_bad_nonce() -> None:
    lookup = _lookup(_store())
    creds = _authorize(DigestServer(b"other secret", REALM), NOW, algorithm="MD5")
    server = DigestServer(SECRET, REALM)
    assert server.verify(creds, method="INVITE", ha1_lookup=lookup, now=NOW).outcome is (
        DigestOutcome.BAD_NONCE
    )
    creds = _authorize(DigestServer(SECRET, "other.realm"), NOW, algorithm="MD5")
    assert server.verify(creds, method="INVITE", ha1_lookup=lookup, now=NOW).outcome is (
        DigestOutcome.BAD_NONCE
    )
    with_opaque = DigestServer(SECRET, REALM, opaque="expected")
    creds = _authorize(server, NOW, algorithm="MD5")  # answered without opaque
    assert with_opaque.verify(creds, method="INVITE", ha1_lookup=lookup, now=NOW).outcome is (
        DigestOutcome.BAD_NONCE
    )


def test_response_is_bound_to_the_method() -> None:
    server = DigestServer(SECRET, REALM)
    creds = _authorize(server, NOW, algorithm="SHA-256", method="REGISTER")
    result = server.verify(creds, method="INVITE", ha1_lookup=_lookup(_store()), now=NOW)
    assert result.outcome is DigestOutcome.WRONG_RESPONSE


def test_unknown_user_and_wrong_password_are_answered_alike() -> None:
    server = DigestServer(SECRET, REALM, nonce_ttl=300)
    lookup = _lookup(_store())
    for now in (NOW, NOW + 900):  # fresh and expired nonces alike
        wrong = server.verify(
            _authorize(server, NOW, algorithm="MD5", password="guess"),
            method="INVITE",
            ha1_lookup=lookup,
            now=now,
        )
        unknown = server.verify(
            _authorize(server, NOW, algorithm="MD5", username="mallory"),
            method="INVITE",
            ha1_lookup=lookup,
            now=now,
        )
        assert wrong.outcome is DigestOutcome.WRONG_RESPONSE
        assert unknown.outcome is DigestOutcome.UNKNOWN_USER
        # Everything the edge may put on the wire is the same for both.
        assert (wrong.accepted, wrong.stale) == (unknown.accepted, unknown.stale) == (False, False)


def test_rfc2069_answer_without_qop_is_verified() -> None:
    server = DigestServer(SECRET, REALM)
    offered = parse_challenge(server.challenge(NOW, algorithms=("MD5",))[0])
    legacy = DigestChallenge(realm=offered.realm, nonce=offered.nonce)  # a client ignoring qop
    value = answer_challenge(
        legacy, method="INVITE", uri="sip:x@y", username="alice", password="s3cret", cnonce="c"
    )
    assert "qop" not in value
    assert "cnonce" not in value
    creds = parse_authorization(value)
    assert creds.response == _md5(
        f"{ha1('alice', REALM, 's3cret')}:{offered.nonce}:{_md5('INVITE:sip:x@y')}"
    )
    assert server.verify(creds, method="INVITE", ha1_lookup=_lookup(_store()), now=NOW).accepted


def test_parse_authorization_tolerates_spacing_case_and_escapes() -> None:
    creds = parse_authorization(
        'digest   USERNAME = "al\\"ice" ,realm="r",nonce="n",uri=sip:bob@example.com,'
        'response=ABCDEF, algorithm=sha-256,qop=auth,nc=0000000a,cnonce="x, y"  '
    )
    assert creds == DigestCredentials(
        username='al"ice',
        realm="r",
        nonce="n",
        uri="sip:bob@example.com",
        response="abcdef",
        algorithm="SHA-256",
        qop="auth",
        nc="0000000a",
        cnonce="x, y",
    )


def test_parse_authorization_defaults_to_md5_without_qop() -> None:
    creds = parse_authorization('Digest username="a", realm="r", nonce="n", uri="u", response="0"')
    assert (creds.algorithm, creds.qop, creds.nc, creds.cnonce) == ("MD5", None, None, None)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Digest",
        "Basic dXNlcjpwYXNz",
        'Digest username="a", realm="r", nonce="n", uri="u"',  # no response
        'Digest username="a" realm="r", nonce="n", uri="u", response="0"',  # missing comma
        'Digest username="a, realm="r", nonce="n", uri="u", response="0"',  # unterminated quote
        'Digest username="a", username="b", realm="r", nonce="n", uri="u", response="0"',
        'Digest username="a", realm="r", nonce="n", uri="u", response="0", algorithm=SHA-512',
        'Digest username="a", realm="r", nonce="n", uri="u", response="0", algorithm=MD5-sess',
        'Digest username="a", realm="r", nonce="n", uri="u", response="0", qop=auth-int, '
        'nc=00000001, cnonce="c"',
        'Digest username="a", realm="r", nonce="n", uri="u", response="0", qop=auth',  # no nc
        'Digest username="a", realm="r", nonce="n", uri="u", response="0", qop=auth, '
        'nc=1, cnonce="c"',  # nc is not 8 hex digits
        'Digest username="a", realm="r", nonce="n", uri="u", response="0", =x',
    ],
)
def test_malformed_authorization_is_a_remote_400(value: str) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        parse_authorization(value)
    assert caught.value.status_hint == 400


def test_non_ascii_response_is_a_wrong_response_not_a_crash() -> None:
    server = DigestServer(SECRET, REALM)
    creds = _with(_authorize(server, NOW, algorithm="MD5"), response="é" * 32)
    result = server.verify(creds, method="INVITE", ha1_lookup=_lookup(_store()), now=NOW)
    assert result.outcome is DigestOutcome.WRONG_RESPONSE


def test_select_challenge_prefers_our_order_and_skips_the_rest() -> None:
    values = [
        'Basic realm="x"',
        'Digest realm="r", nonce="n1", algorithm=SHA-512-256, qop="auth"',
        'Digest realm="r", nonce="n2", qop="auth"',  # MD5 by default
        'Digest realm="r", nonce="n3", algorithm=SHA-256, qop="auth"',
    ]
    assert select_challenge(values).nonce == "n3"
    assert select_challenge(values, algorithms=("MD5", "SHA-256")).nonce == "n2"
    with pytest.raises(RemoteProtocolError):
        select_challenge(values[:2])


def test_answer_challenge_misuse_and_unsupported_qop() -> None:
    challenge = DigestChallenge(realm="r", nonce="n", qop=("auth",))
    common = {"method": "INVITE", "uri": "sip:x@y", "username": "u", "cnonce": "c"}
    with pytest.raises(LocalProtocolError):
        answer_challenge(challenge, **common)
    with pytest.raises(LocalProtocolError):
        answer_challenge(challenge, password="p", ha1_hex="00", **common)
    with pytest.raises(LocalProtocolError):
        answer_challenge(challenge, password="p", nc=0, **common)
    with pytest.raises(RemoteProtocolError):
        answer_challenge(
            DigestChallenge(realm="r", nonce="n", qop=("auth-int",)), password="p", **common
        )


def test_answer_counts_nonce_uses_in_hex() -> None:
    challenge = DigestChallenge(realm="r", nonce="n", qop=("auth",))
    value = answer_challenge(
        challenge, method="BYE", uri="sip:x@y", username="u", password="p", cnonce="c", nc=26
    )
    assert parse_authorization(value).nc == "0000001a"


def test_server_needs_a_secret_and_wall_clock_time() -> None:
    with pytest.raises(LocalProtocolError):
        DigestServer(b"", REALM)
    with pytest.raises(LocalProtocolError):
        DigestServer(SECRET, REALM).challenge(-1.0)
