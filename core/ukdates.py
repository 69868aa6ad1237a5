"""Dates and times as NHS clinical applications show them (CUI): ``05-Mar-2024`` and ``14:30``, in UK local time.

FHIR dates may be partial (``2024``, ``2024-03``) and dateTimes carry their own offset (or none, when only a day
was recorded). A date is shown with the precision it was recorded at and is never moved across midnight by a
time-zone conversion; a dateTime with a time is converted to Europe/London (daylight saving handled by the
tz database) before it is shown. Anything unreadable is shown as sent, never dropped.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

UK = ZoneInfo("Europe/London")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_PARTIAL = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")
EMPTY = "–"


def _instant(value: str) -> datetime | None:
    """A dateTime with a time of day, as an aware datetime (no offset: taken as UK local time)."""
    if len(value) <= 10 or "T" not in value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.replace(tzinfo=UK) if parsed.tzinfo is None else parsed


def uk_date(value: str | date | datetime | float | None) -> str:
    """``dd-Mmm-yyyy`` (or ``Mmm-yyyy``, ``yyyy`` for partial dates); a time of day moves it to UK local time."""
    if value is None or value == "":
        return EMPTY
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = datetime.fromtimestamp(value, UTC)
    if isinstance(value, datetime):
        local = (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UK)
        return f"{local.day:02d}-{MONTHS[local.month - 1]}-{local.year}"
    if isinstance(value, date):
        return f"{value.day:02d}-{MONTHS[value.month - 1]}-{value.year}"
    text = str(value).strip()
    instant = _instant(text)
    if instant is not None:
        return uk_date(instant)
    m = _PARTIAL.match(text[:10])
    if not m or (len(text) > 10 and text[10] != "T"):
        return text
    year, month, day = m.groups()
    if month and not 1 <= int(month) <= 12:
        return text
    if day:
        return f"{day}-{MONTHS[int(month) - 1]}-{year}"
    if month:
        return f"{MONTHS[int(month) - 1]}-{year}"
    return year


def uk_time(value: str | datetime | float | None) -> str:
    """``HH:mm`` in UK local time; empty when only a day was recorded."""
    if value is None or value == "":
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = datetime.fromtimestamp(value, UTC)
    instant = value if isinstance(value, datetime) else _instant(str(value).strip())
    if instant is None:
        return ""
    local = (instant if instant.tzinfo else instant.replace(tzinfo=UTC)).astimezone(UK)
    return f"{local.hour:02d}:{local.minute:02d}"


def uk_datetime(value: str | datetime | float | None) -> str:
    """``dd-Mmm-yyyy HH:mm`` in UK local time, or the date alone when no time was recorded."""
    shown_date, shown_time = uk_date(value), uk_time(value)
    return f"{shown_date} {shown_time}" if shown_time else shown_date


def age_on(birth: str | None, on: date | None = None) -> int | None:
    """Whole years from a (full) birth date to ``on`` (today in the UK by default)."""
    m = _PARTIAL.match((birth or "")[:10])
    if not m or not m.group(3):
        return None
    born = date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    today = on or datetime.now(UK).date()
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def register(env) -> None:
    """The Jinja filters every template uses for dates and times."""
    env.filters["uk_date"] = uk_date
    env.filters["uk_time"] = uk_time
    env.filters["uk_datetime"] = uk_datetime
