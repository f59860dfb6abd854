"""Dialled strings and URI users to E.164, and the region of a number."""

from __future__ import annotations

import pytest

from edge.numbering import region_of, to_e164


@pytest.mark.parametrize(
    "text, region, expected",
    [
        # International form: the fast path, whatever the region.
        ("+14155550100", "US", "+14155550100"),
        ("+442079460958", "US", "+442079460958"),
        ("+442079460958", None, "+442079460958"),
        ("+1 (415) 555-0100", "US", "+14155550100"),  # RFC 3966 visual separators
        ("+44.20.7946.0958", "GB", "+442079460958"),
        ("%2B14155550100", "US", "+14155550100"),  # escaped in a URI user
        ("+14155550100;npdi;rn=+14155550000", "US", "+14155550100"),  # user=phone parameters
        ("+19005550100", "US", "+19005550100"),  # premium, but a number: policy decides
        # National forms and international prefixes, by region.
        ("4155550100", "US", "+14155550100"),
        ("14155550100", "US", "+14155550100"),
        ("(415) 555-0100", "US", "+14155550100"),
        ("011442079460958", "US", "+442079460958"),
        ("020 7946 0958", "GB", "+442079460958"),
        ("00442079460958", "GB", "+442079460958"),
        ("0014155550100", "GB", "+14155550100"),
        ("447911123456", "GB", "+447911123456"),  # country code without "+" or "00"
        ("01 42 68 53 00", "FR", "+33142685300"),
        # Not numbers.
        ("00442079460958", "US", None),  # 00 is not the US international prefix
        ("4155550100", None, None),  # a national number without a region
        ("4155550100", "ZZ", None),
        ("911", "US", None),  # service codes are not E.164
        ("*67", "US", None),
        ("alice", "US", None),
        ("1-800-FLOWERS", "US", None),
        ("", "US", None),
        (None, "US", None),
        ("+", "US", None),
        ("+1234567890123456", "US", None),  # 16 digits
        ("+0123456789", "US", None),  # no country code starts with 0
        ("+1234", "US", None),  # too short for the fast path, and not valid
        ("+44 20 79x6", "GB", None),
        ("٤١٥٥٥٥٠١٠٠", "US", None),  # non-ASCII digits
    ],
)
def test_to_e164(text: str | None, region: str | None, expected: str | None) -> None:
    assert to_e164(text, region) == expected


@pytest.mark.parametrize(
    "e164, region",
    [
        ("+14155550100", "US"),
        ("+16135550123", "CA"),
        ("+442079460958", "GB"),
        ("+447624123456", "IM"),  # +44 is shared: the number decides
        ("+33142685300", "FR"),
        ("+80012345678", "001"),  # non-geographic
        ("+15555555555", None),  # not a valid +1 number: no region
        ("not a number", None),
    ],
)
def test_region_of(e164: str, region: str | None) -> None:
    assert region_of(e164) == region
