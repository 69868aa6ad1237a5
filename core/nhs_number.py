"""NHS number rules: Modulus 11 check digit, display format, and the FHIR identifier system."""

from __future__ import annotations

import re

from core.identifiers import NHS_NUMBER_SYSTEM  # noqa: F401 - re-exported for callers

WEIGHTS = (10, 9, 8, 7, 6, 5, 4, 3, 2)
_SEPARATORS = re.compile(r"[\s-]")


def normalise(value: str) -> str:
    """Strip the spaces and hyphens people type (``943 476 5919`` → ``9434765919``)."""
    return _SEPARATORS.sub("", value or "")


def check_digit(first_nine: str) -> int | None:
    """The Modulus 11 check digit for nine digits, or None when no valid number can end them (r = 10)."""
    if len(first_nine) != 9 or not first_nine.isdigit():
        raise ValueError("need exactly nine digits")
    total = sum(int(d) * w for d, w in zip(first_nine, WEIGHTS, strict=True))
    check = 11 - total % 11
    if check == 11:
        return 0
    if check == 10:
        return None
    return check


def is_valid(value: str) -> bool:
    """True for ten digits whose last digit is the Modulus 11 check digit of the first nine."""
    digits = normalise(value)
    if len(digits) != 10 or not digits.isdigit():
        return False
    return check_digit(digits[:9]) == int(digits[9])


def is_test_range(value: str) -> bool:
    """999 000 0000 – 999 999 9999 are valid-format numbers never issued to anyone: sandbox only."""
    digits = normalise(value)
    return is_valid(digits) and digits.startswith("999")


def format_nhs_number(value: str) -> str:
    """Display form 3-3-4 (``943 476 5919``); anything that is not ten digits is returned unchanged."""
    digits = normalise(value)
    if len(digits) != 10 or not digits.isdigit():
        return value
    return f"{digits[:3]} {digits[3:6]} {digits[6:]}"


def from_identifiers(identifiers: list[dict] | None) -> str | None:
    """The NHS number among a FHIR resource's identifiers, if one is present (validity is checked elsewhere)."""
    for ident in identifiers or []:
        if ident.get("system") == NHS_NUMBER_SYSTEM and ident.get("value"):
            return normalise(ident["value"])
    return None
