"""Dates dd-Mmm-yyyy and times HH:mm in UK local time, daylight saving handled (issue 11 item 4)."""

from __future__ import annotations

from datetime import date

import pytest

from core.ukdates import age_on, uk_date, uk_datetime, uk_time


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("2024-03-05", "05-Mar-2024"),
        ("2024-03", "Mar-2024"),  # partial dates keep their precision
        ("2024", "2024"),
        ("2024-07-01T23:30:00Z", "02-Jul-2024"),  # BST: 00:30 on the next day in London
        ("2024-01-01T23:30:00Z", "01-Jan-2024"),  # GMT: same day
        ("2024-07-01T10:00:00+02:00", "01-Jul-2024"),
        (None, "–"),
        ("", "–"),
        ("not a date", "not a date"),  # shown as sent, never dropped
        ("2024-13-01", "2024-13-01"),
        (date(1968, 2, 29), "29-Feb-1968"),
    ],
)
def test_dates_read_as_the_nhs_writes_them(value, shown: str) -> None:
    assert uk_date(value) == shown


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("2024-07-01T13:05:00Z", "14:05"),  # British Summer Time
        ("2024-12-01T13:05:00Z", "13:05"),  # Greenwich Mean Time
        ("2024-03-31T00:59:59Z", "00:59"),  # the last GMT second before the clocks go forward
        ("2024-03-31T01:00:00Z", "02:00"),  # …and the first BST one
        ("2024-10-27T00:30:00Z", "01:30"),  # the hour repeated when the clocks go back, first time (BST)
        ("2024-10-27T01:30:00Z", "01:30"),  # …and second time (GMT)
        ("2024-07-01T13:05:00", "13:05"),  # no offset: already UK local time
        ("2024-07-01", ""),  # a day only: no time to show
        (1719839100, "14:05"),  # a UNIX time (2024-07-01T13:05:00Z)
    ],
)
def test_times_are_uk_local_with_daylight_saving(value, shown: str) -> None:
    assert uk_time(value) == shown


def test_date_and_time_together() -> None:
    assert uk_datetime("2024-07-01T13:05:00Z") == "01-Jul-2024 14:05"
    assert uk_datetime("2024-07-01") == "01-Jul-2024"


def test_age_in_whole_years() -> None:
    assert age_on("1980-06-15", date(2026, 6, 14)) == 45
    assert age_on("1980-06-15", date(2026, 6, 15)) == 46
    assert age_on("1980", date(2026, 6, 15)) is None
