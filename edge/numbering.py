"""Phone numbers as the edge sees them: dialled strings and URI users normalised to E.164.

`to_e164` turns what a PBX or carrier put in a Request-URI, To or From user into `+CC...` (or
None when it is not a phone number); `region_of` gives the ISO country of an E.164 number for
the allowed-countries check. Numbers already in international form take a fast path of a few
string operations; national and "00"/"011" forms go through phonenumbers (tens of
microseconds, cached), which is acceptable once per call and never done per message.

Pure functions only: no I/O, no clock, no Django (`prepare_regions` loads phonenumbers' metadata
ahead of the calls that would).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from urllib.parse import unquote

import phonenumbers

from edge.sip.grammar import forgettable

__all__ = ["prepare_regions", "region_of", "to_e164"]

# RFC 3966 visual separators, plus the spaces people type.
_SEPARATORS = str.maketrans("", "", "-.() \t")
_DIGITS = frozenset("0123456789")
# E.164 allows at most 15 digits; below 7 no real international number exists, so such
# strings go to phonenumbers for a verdict instead of the fast path.
_MIN_FAST_DIGITS = 7
_MAX_DIGITS = 15


def to_e164(digits_or_user: str | None, default_region: str | None) -> str | None:
    """`digits_or_user` as E.164, or None when it is not a phone number.

    Accepts "+CC..." (visual separators and %-escapes allowed), national numbers of
    `default_region`, and that region's international prefix ("00", "011"...). A URI user's
    parameters (";npdi", ";phone-context=...") are ignored. Anything with letters, "*" or "#"
    is not a number: it is a username or a service code.
    """
    if not digits_or_user:
        return None
    text = unquote(digits_or_user) if "%" in digits_or_user else digits_or_user
    text = text.partition(";")[0].translate(_SEPARATORS)
    if text.startswith("+"):
        digits = text[1:]
        if not digits or not _DIGITS.issuperset(digits) or len(digits) > _MAX_DIGITS:
            return None
        if len(digits) >= _MIN_FAST_DIGITS and digits[0] != "0":
            return text
        return _parse(text, None)
    if not text or not _DIGITS.issuperset(text):
        return None
    return _parse(text, default_region)


@lru_cache(maxsize=16384)
def _parse(text: str, region: str | None) -> str | None:
    """phonenumbers' verdict: the valid E.164 form of `text` dialled in `region`, or None."""
    try:
        parsed = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


@lru_cache(maxsize=65536)
def region_of(e164: str) -> str | None:
    """The ISO 3166 region of an E.164 number ("001" for non-geographic ones), or None.

    Needs a valid number where a country code is shared (+1 is US, CA and others; +44 is GB,
    GG, IM and JE), so an invalid "+1..." has no region.
    """
    try:
        parsed = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return None
    region: str | None = phonenumbers.region_code_for_number(parsed)
    return region


forgettable(_parse.cache_clear)
forgettable(region_of.cache_clear)

_PREPARED_REGIONS: set[str] = set()


def prepare_regions(regions: Iterable[str]) -> None:
    """Load phonenumbers' metadata of `regions` and compile its patterns for them, before any
    call needs them: phonenumbers loads a region's metadata (a module, hundreds of objects, a
    few regular expressions) at the first number dialled there, which otherwise lands among
    the objects of the first busy spell and outlives it (edge/runtime/gc_policy.py). Unknown
    regions are left to the first call, as before. A region is prepared once per process, so
    a config applied on the loop costs a set lookup per region already seen."""
    for region in set(regions) - _PREPARED_REGIONS:
        _PREPARED_REGIONS.add(region)
        example = phonenumbers.example_number(region)
        if example is None:
            continue
        national = phonenumbers.national_significant_number(example)
        parsed = phonenumbers.parse(national, region)
        if phonenumbers.is_valid_number(parsed):
            phonenumbers.region_code_for_number(parsed)
            phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
