"""Validators every app's text shares."""

import unicodedata

from django.core.exceptions import ValidationError


def validate_no_control_characters(value: object) -> None:
    """Names, descriptions and other one-line text: no control characters (tabs, newlines,
    NUL, escape sequences), which corrupt logs, CSV exports and SIP headers."""
    if not isinstance(value, str):
        return
    bad = sorted({ch for ch in value if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")})
    if bad:
        shown = ", ".join(f"U+{ord(ch):04X}" for ch in bad[:5])
        raise ValidationError(f"Control characters are not allowed here ({shown}).", code="invalid")
