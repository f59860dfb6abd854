"""Django's side of the provisioning rules: a thin adapter over `edge/validators.py`.

What an edge accepts is defined once, in `edge.validators`; each function here calls it and turns
its `InvalidValue` into a Django `ValidationError`, so the models, the API, the admin and the
bulk import refuse exactly what an edge would refuse (a 400 naming the field), and never store
it. A few rules are stricter here than on the edge (a prefix must start with a country code, a
country must be one phonenumbers knows): the database may hold less than an edge accepts, never
more. Rules that span rows (source addresses) are in `trunking/selectors.py`.
"""

from collections.abc import Callable
from typing import Any, TypeVar

import phonenumbers
from django.core.exceptions import ValidationError

from edge import validators as edge

_T = TypeVar("_T")


def edge_rule(check: Callable[[Any], _T], value: Any) -> _T:
    """`check(value)`, its refusal as a ValidationError (the edge's own words)."""
    try:
        return check(value)
    except edge.InvalidValue as exc:
        raise ValidationError(
            f"{exc.message[:1].upper()}{exc.message[1:]}.", code="invalid"
        ) from exc


_PARSE_PROBLEMS = {
    phonenumbers.NumberParseException.INVALID_COUNTRY_CODE: "its country is unknown",
    phonenumbers.NumberParseException.NOT_A_NUMBER: "it is not a phone number",
    phonenumbers.NumberParseException.TOO_SHORT_NSN: "it is too short",
    phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD: "it is too short",
    phonenumbers.NumberParseException.TOO_LONG: "it is too long",
}


def normalize_e164(value: str, default_region: str | None = None) -> str:
    """``value`` as E.164 (``+14155550100``), or ValidationError saying why not, in words a
    user knows. A national number (``020 7946 0000``) needs ``default_region`` (``GB``)."""
    text = (value or "").strip()
    if not any(ch.isdigit() for ch in text):
        raise ValidationError(f"'{value}' is not a phone number: it has no digits.", code="invalid")
    try:
        parsed = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException as exc:
        if exc.error_type == exc.INVALID_COUNTRY_CODE and not text.startswith("+"):
            message = (
                f"'{value}' has no country code: write it as +<country code><number>, or "
                "name a trunk (its default country applies) or set the customer's default "
                "country."
            )
        else:
            problem = _PARSE_PROBLEMS.get(exc.error_type, "it is not a phone number")
            message = f"'{value}' cannot be read as a phone number: {problem}."
        raise ValidationError(message, code="invalid") from exc
    if not phonenumbers.is_valid_number(parsed):
        region = phonenumbers.region_code_for_number(parsed) or default_region
        where = f" in {region}" if region else ""
        raise ValidationError(
            f"'{value}' is not a number that exists{where} (wrong length or prefix).",
            code="invalid",
        )
    return edge_rule(
        edge.e164_number, phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    )


def validate_region(value: str) -> None:
    edge_rule(edge.region, value)
    if value not in phonenumbers.SUPPORTED_REGIONS:
        raise ValidationError(f"'{value}' is not a known ISO 3166 country code.", code="invalid")


def validate_e164_prefix(value: str) -> None:
    """A destination prefix: '+' and 1 to 15 digits, starting with a known country code."""
    digits = edge_rule(edge.e164_prefix, value)[1:]
    if not any(phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(int(digits[:n])) for n in (1, 2, 3)):
        raise ValidationError(f"'{value}' does not start with a country code.", code="invalid")


def validate_destination(value: str) -> None:
    """An allowed destination: an E.164 prefix (+44) or an ISO country code (GB)."""
    is_prefix, _ = edge_rule(edge.destination, value)
    if is_prefix:
        validate_e164_prefix(value)
    else:
        validate_region(value)


def _validate_list(value: Any, item_validator: Any, what: str) -> None:
    if not isinstance(value, list):
        raise ValidationError(f"Give a list of {what}.", code="invalid")
    errors = []
    for item in value:
        try:
            item_validator(item)
        except ValidationError as exc:
            errors.extend(exc.messages)
    if errors:
        raise ValidationError(errors)


def validate_destination_list(value: Any) -> None:
    _validate_list(value, validate_destination, "prefixes or country codes")


def validate_prefix_list(value: Any) -> None:
    _validate_list(value, validate_e164_prefix, "E.164 prefixes")


def validate_sip_code_list(value: Any) -> None:
    _validate_list(value, lambda code: edge_rule(edge.failover_code, code), "SIP codes")


def normalize_cidr(value: str) -> str:
    """A CIDR (IPv4 or IPv6; a bare address is a /32 or /128) in canonical form."""
    return edge_rule(edge.canonical_cidr, str(value).strip())


def validate_cidr(value: str) -> None:
    normalize_cidr(value)


def validate_origination_uri(value: str) -> None:
    """A SIP URI the edge can send INVITEs to: sip: or sips: (TLS only), a host, optional
    port and transport."""
    edge_rule(edge.origination_uri, value)


def validate_gateway_host(value: str) -> None:
    """An IP literal (IPv6 may be bracketed) or a hostname; the port is a field of its own."""
    edge_rule(edge.gateway_host, value)


def validate_tech_prefix(value: str) -> None:
    edge_rule(edge.tech_prefix, value)


def validate_control_url(value: str) -> None:
    """http(s)://host[:port] of an edge's control API; single-label hosts (a container's
    service name, "edge") are fine, unlike Django's URLValidator."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValidationError(f"'{value}' is not a URL: {exc}.") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(f"'{value}' must be http(s)://host[:port].")
    if port == 0 or any(ch.isspace() for ch in value):
        raise ValidationError(f"'{value}' is not a valid control URL.")
