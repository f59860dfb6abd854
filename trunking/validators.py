"""Field validators of provisioning data: E.164 numbers, prefixes, countries, CIDRs, SIP URIs."""

import ipaddress
from typing import Any

import phonenumbers
from django.core.exceptions import ValidationError

from edge.sip.errors import RemoteProtocolError
from edge.sip.uri import parse_uri

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
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def validate_region(value: str) -> None:
    if value not in phonenumbers.SUPPORTED_REGIONS:
        raise ValidationError(f"'{value}' is not a known ISO 3166 country code.", code="invalid")


def validate_e164_prefix(value: str) -> None:
    """A destination prefix: '+' and 1 to 15 digits, starting with a known country code."""
    if (
        not (isinstance(value, str) and value.startswith("+") and value[1:].isdigit() and value[1:])
        or len(value) > 16
    ):
        raise ValidationError(f"'{value}' is not a prefix like +44 or +1415.", code="invalid")
    digits = value[1:]
    if not any(phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(int(digits[:n])) for n in (1, 2, 3)):
        raise ValidationError(f"'{value}' does not start with a country code.", code="invalid")


def validate_destination(value: str) -> None:
    """An allowed destination: an E.164 prefix (+44) or an ISO country code (GB)."""
    if isinstance(value, str) and value.startswith("+"):
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
    def one(code: Any) -> None:
        if not isinstance(code, int) or isinstance(code, bool) or not 300 <= code <= 699:
            raise ValidationError(f"'{code}' is not a SIP final error code (300-699).")

    _validate_list(value, one, "SIP codes")


def normalize_cidr(value: str) -> str:
    """A CIDR (IPv4 or IPv6; a bare address is a /32 or /128) in canonical form."""
    try:
        return str(ipaddress.ip_network(str(value).strip(), strict=False))
    except ValueError as exc:
        raise ValidationError(f"'{value}' is not an IP network in CIDR notation.") from exc


def validate_cidr(value: str) -> None:
    normalize_cidr(value)


def validate_origination_uri(value: str) -> None:
    """A SIP URI the edge can send INVITEs to: sip: or sips:, a host, optional port/transport."""
    try:
        uri = parse_uri(value)
    except RemoteProtocolError as exc:
        raise ValidationError(f"'{value}' is not a valid SIP URI: {exc.reason}.") from exc
    if uri.scheme not in ("sip", "sips"):
        raise ValidationError(f"'{value}' must be a sip: or sips: URI.")
    transport = uri.params.get("transport")
    if transport is not None and str(transport).lower() not in ("udp", "tcp", "tls"):
        raise ValidationError(f"'{value}' has an unsupported transport '{transport}'.")


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
