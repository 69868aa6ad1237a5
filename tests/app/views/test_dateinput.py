"""Dates typed in day, month and year boxes (NHS date input), read back as ISO dates (issue 11 item 4)."""

from __future__ import annotations

import re

import pytest

from app.views.dateinput import parts, read
from tests.app.access.test_governance_http import form_fields, privacy_console


@pytest.mark.parametrize(
    ("boxes", "value"),
    [
        ({"d-day": "5", "d-month": "3", "d-year": "2026"}, "2026-03-05"),
        ({"d-day": " 05 ", "d-month": "03", "d-year": "2026"}, "2026-03-05"),
        ({"d-day": "31", "d-month": "2", "d-year": "2026"}, "31/2/2026"),  # not a real date: kept as typed
        ({"d-day": "5", "d-month": "3", "d-year": "26"}, "5/3/26"),  # two-digit year: ambiguous, kept
        ({"d-day": "", "d-month": "3", "d-year": "2026"}, "/3/2026"),
        ({}, ""),
        ({"d": "2026-03-05"}, "2026-03-05"),  # one ISO field (scripts, links) is read as sent
    ],
)
def test_boxes_make_a_real_date_or_keep_what_was_typed(boxes: dict, value: str) -> None:
    assert read(boxes, "d") == value


def test_boxes_are_refilled_from_what_was_read() -> None:
    assert parts("2026-03-05") == {"day": "05", "month": "03", "year": "2026"}
    assert parts("31/2/2026") == {"day": "31", "month": "2", "year": "2026"}
    assert parts("") == {"day": "", "month": "", "year": ""}


def test_training_date_typed_in_boxes_over_http(sandbox) -> None:
    officer, base = privacy_console(sandbox)
    page = officer.get(base + "training").text
    assert 'name="completed-day"' in page and 'name="completed-month"' in page and 'name="completed-year"' in page
    assert 'type="date"' not in page
    csrf = form_fields(page)["csrf"]

    def attest(day: str, month: str):
        boxes = {"completed-day": day, "completed-month": month, "completed-year": "2026"}
        return officer.post(base + "training", data={"csrf": csrf, "sds_user_id": "555000000777", **boxes})

    wrong = attest("31", "2")
    assert wrong.status_code == 400 and "555000000777" not in wrong.text.split("<tbody", 1)[-1]
    ok = attest("3", "11")
    assert ok.status_code == 200
    row = re.search(r"<tr><td>555000000777</td><td[^>]*>([^<]+)</td>", ok.text)
    assert row and row.group(1) == "03-Nov-2026"  # stored as ISO, shown dd-Mmm-yyyy


def test_privacy_pages_show_uk_local_times(sandbox) -> None:
    officer, base = privacy_console(sandbox)
    audit = officer.get(base + "audit", params={"nhs": "999 100 0372"}).text
    times = re.findall(r'<td class="nowrap">([^<]+)</td><td>', audit)
    assert times, audit[-2000:]
    assert all(re.fullmatch(r"\d{2}-[A-Z][a-z]{2}-\d{4} \d{2}:\d{2}", t) for t in times), times[:5]
