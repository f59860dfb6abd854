"""SIP, SIPS and tel URIs, name-addr values and parameters."""

from __future__ import annotations

import pytest

from edge.sip import AbsoluteUri, Parameters, RemoteProtocolError, parse_name_addr, parse_uri

# (text, scheme, user, password, host, port, params, headers); str() must give the text back.
VALID_URIS = [
    ("sip:example.com", "sip", None, None, "example.com", None, {}, []),
    ("sip:alice@atlanta.example.com", "sip", "alice", None, "atlanta.example.com", None, {}, []),
    ("sips:bob@biloxi.example.com:5061", "sips", "bob", None, "biloxi.example.com", 5061, {}, []),
    ("sip:alice:secretword@atlanta.example.com;transport=tcp", "sip", "alice", "secretword",
     "atlanta.example.com", None, {"transport": "tcp"}, []),
    ("sip:+1-212-555-1212:1234@gateway.example.com;user=phone", "sip", "+1-212-555-1212", "1234",
     "gateway.example.com", None, {"user": "phone"}, []),
    ("sip:192.0.2.4", "sip", None, None, "192.0.2.4", None, {}, []),
    ("sip:atlanta.example.com;method=REGISTER?to=alice%40atlanta.example.com", "sip", None, None,
     "atlanta.example.com", None, {"method": "REGISTER"}, [("to", "alice%40atlanta.example.com")]),
    ("sip:alice;day=tuesday@atlanta.example.com", "sip", "alice;day=tuesday", None,
     "atlanta.example.com", None, {}, []),
    ("sip:proxy.example;lr;maddr=239.255.255.1;ttl=15", "sip", None, None, "proxy.example", None,
     {"lr": None, "maddr": "239.255.255.1", "ttl": "15"}, []),
    ("sip:[2001:db8::10]", "sip", None, None, "[2001:db8::10]", None, {}, []),
    ("sip:user@[2001:db8::10]:5070;transport=udp", "sip", "user", None, "[2001:db8::10]", 5070,
     {"transport": "udp"}, []),
    ("sip:[::ffff:192.0.2.10]:19823", "sip", None, None, "[::ffff:192.0.2.10]", 19823, {}, []),
    ("sip:%61lice@example.com", "sip", "%61lice", None, "example.com", None, {}, []),
    ("sip:a@b?subject=project%20x&priority=urgent", "sip", "a", None, "b", None, {},
     [("subject", "project%20x"), ("priority", "urgent")]),
    ("sip:a@b;%6C%72", "sip", "a", None, "b", None, {"%6C%72": None}, []),
    ("tel:+1-201-555-0123", "tel", "+1-201-555-0123", None, "", None, {}, []),
    ("tel:7042;phone-context=example.com", "tel", "7042", None, "", None,
     {"phone-context": "example.com"}, []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "scheme", "user", "password", "host", "port", "params", "headers"), VALID_URIS
)
def test_valid_uri(
    text: str,
    scheme: str,
    user: str | None,
    password: str | None,
    host: str,
    port: int | None,
    params: dict[str, str | None],
    headers: list[tuple[str, str]],
) -> None:
    uri = parse_uri(text)
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == (
        scheme,
        user,
        password,
        host,
        port,
    )
    assert dict(uri.params) == params
    assert uri.headers == headers
    assert str(uri) == text


def test_scheme_is_case_insensitive() -> None:
    assert parse_uri("SIP:Alice@Example.COM").scheme == "sip"


def test_escaped_user_is_kept_raw_and_compared_unescaped() -> None:
    uri = parse_uri("sip:%61lice%20b@example.com")
    assert uri.user == "%61lice%20b"
    assert uri.unescaped_user == "alice b"
    assert parse_uri("sip:example.com").unescaped_user is None


INVALID_URIS = [
    ("", 400),
    ("example.com", 400),
    ("sip:", 400),
    ("sip:@example.com", 400),
    ("sip:alice@", 400),
    ("sip:alice@exa mple.com", 400),
    ("sip:alice@example.com:", 400),
    ("sip:alice@example.com:port", 400),
    ("sip:alice@example.com:65536", 400),
    ("sip:al<ice@example.com", 400),
    ("sip:alice%2@example.com", 400),
    ("sip:alice%zz@example.com", 400),
    ("sip:alice@example.com;", 400),
    ("sip:alice@example.com;=x", 400),
    ("sip:alice@example.com;lr=", 400),
    ("sip:alice@example.com?", 400),
    ("sip:alice@example.com?novalue", 400),
    # Letters and digits outside ASCII are not unreserved (the ASCII-alphanumeric fast path)
    ("sip:\u00e9ve@example.com", 400),
    ("sip:alice@example.com;transport=ud\u00f0", 400),
    ("sip:alice@example.com;\u00b2=1", 400),
    ("tel:+1555;phone-context=\u0661\u0662", 400),
    ("sip:2001:db8::10", 400),  # RFC 5118 4.2: IPv6 without brackets
    ("sip:[2001:db8::10", 400),
    ("sip:[2001:db8::zz]", 400),
    ("sip:[2001:db8::10]5060", 400),
    ("<sip:alice@example.com>", 400),
    ("tel:", 400),
    ("tel:+1 555", 400),
    ("http://www.example.com/", 416),
    ("isbn:2983792873", 416),
    ("mailto:alice@example.com", 416),
]


@pytest.mark.parametrize(("text", "status_hint"), INVALID_URIS)
def test_invalid_uri(text: str, status_hint: int) -> None:
    with pytest.raises(RemoteProtocolError) as raised:
        parse_uri(text)
    assert raised.value.status_hint == status_hint


# (text, display name, URI text, header params)
NAME_ADDRS = [
    ('"Bob" <sip:bob@biloxi.example.com>;tag=a6c85cf', "Bob", "sip:bob@biloxi.example.com",
     {"tag": "a6c85cf"}),
    ("Bob <sip:bob@biloxi.example.com>", "Bob", "sip:bob@biloxi.example.com", {}),
    ("A.  G.  Bell<sip:agb@bell.example>", "A. G. Bell", "sip:agb@bell.example", {}),
    ("<sip:carol@chicago.example.com;lr>;q=0.7;expires=60", None,
     "sip:carol@chicago.example.com;lr", {"q": "0.7", "expires": "60"}),
    ("sip:carol@chicago.example.com;tag=1;lr", None, "sip:carol@chicago.example.com",
     {"tag": "1", "lr": None}),
    ('"a \\"quoted\\" name \\\\" <sip:a@b>', 'a "quoted" name \\', "sip:a@b", {}),
    ('"" <sip:a@b>', "", "sip:a@b", {}),
    ("<sip:a@b> ; tag = x ; +sip.instance=\"<urn:uuid:1>\"", None, "sip:a@b",
     {"tag": "x", "+sip.instance": '"<urn:uuid:1>"'}),
    ("<tel:+14155550100>", None, "tel:+14155550100", {}),
    ("<urn:service:sos>", None, "urn:service:sos", {}),
]  # fmt: skip


@pytest.mark.parametrize(("text", "display_name", "uri", "params"), NAME_ADDRS)
def test_name_addr(
    text: str, display_name: str | None, uri: str, params: dict[str, str | None]
) -> None:
    name_addr = parse_name_addr(text)
    assert name_addr.display_name == display_name
    assert str(name_addr.uri) == uri
    assert dict(name_addr.params) == params
    again = parse_name_addr(str(name_addr))
    assert (again.display_name, str(again.uri), dict(again.params)) == (display_name, uri, params)


def test_unknown_scheme_in_a_name_addr_is_kept_and_refused_on_use() -> None:
    name_addr = parse_name_addr("<http://www.example.com>;tag=1")
    assert isinstance(name_addr.uri, AbsoluteUri)
    assert name_addr.tag == "1"
    with pytest.raises(RemoteProtocolError) as raised:
        _ = name_addr.sip_uri
    assert raised.value.status_hint == 416


def test_a_bad_uri_in_an_address_raises_when_the_uri_is_used() -> None:
    name_addr = parse_name_addr("<sip:alice@exa_mple.com>;tag=1")
    assert name_addr.tag == "1"
    assert str(name_addr) == "<sip:alice@exa_mple.com>;tag=1"
    with pytest.raises(RemoteProtocolError, match="host"):
        _ = name_addr.uri


INVALID_NAME_ADDRS = [
    "",
    '"unterminated <sip:a@b>',
    '"name" sip:a@b',
    '"name" x <sip:a@b>',
    "Bell, Alexander <sip:a@b>",
    "< sip:a@b >",
    "<sip:a@b",
    "<>",
    "<sip:a@b> junk",
    "<sip:a@b>;;",
    "<sip:a@b>;tag=",
    "<sip:a@b>;tag=a b",
    "<sip:a@b>;tag=caf\u00e9",  # alphanumeric, but not ASCII: not a token
    "<sip:a@b>;t\u00e4g=1",
    "sip:a@b?Route=x",
    "sip:a@b, sip:c@d",
]


@pytest.mark.parametrize("text", INVALID_NAME_ADDRS)
def test_invalid_name_addr(text: str) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_name_addr(text)


def test_parameters_are_case_insensitive_and_keep_their_spelling() -> None:
    params = Parameters([("Transport", "UDP"), ("lr", None)])
    assert params["transport"] == "UDP"
    assert "LR" in params
    params["TRANSPORT"] = "tcp"
    assert str(params) == ";Transport=tcp;lr"
    del params["Lr"]
    assert list(params) == ["Transport"]
    assert len(params) == 1
