"""Dates typed as the NHS design system asks: three boxes, day, month and year (``<name>-day`` …).

Browsers' own date pickers differ, are hard to use with a keyboard or screen reader, and show dates in the
browser's locale; the NHS date input pattern does not. A form may still send one ISO field ``<name>``
(scripts, older forms): that is read as sent. Whatever is typed is kept, so a wrong date comes back to the
form with an error instead of being lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date


def read(values: Mapping[str, str], name: str) -> str:
    """``YYYY-MM-DD`` when the three boxes make a real date; ``""`` when all are empty (then the ISO field
    ``name``, as sent); otherwise what was typed, ``day/month/year``, which no ISO check accepts."""
    parts = [(values.get(f"{name}-{p}") or "").strip() for p in ("day", "month", "year")]
    if not any(parts):
        return (values.get(name) or "").strip()
    day, month, year = parts
    if day.isdigit() and month.isdigit() and year.isdigit() and len(year) == 4:
        try:
            return date(int(year), int(month), int(day)).isoformat()
        except ValueError:
            pass
    return "/".join(parts)


def parts(value: str | None) -> dict[str, str]:
    """The boxes' contents for a value read by ``read`` (ISO or as typed)."""
    value = value or ""
    if len(value) == 10 and value[4] == "-" and value[7] == "-":
        return {"day": value[8:], "month": value[5:7], "year": value[:4]}
    if value.count("/") == 2:
        day, month, year = value.split("/")
        return {"day": day, "month": month, "year": year}
    return {"day": "", "month": "", "year": ""}
