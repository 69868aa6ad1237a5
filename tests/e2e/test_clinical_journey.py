"""A clinician's safety checks in Chromium (issue 11, "done when"): on the UK patient Margaret and on the
largest Synthea patient, values read as recorded (1), nothing cut without saying so (2), medicines apart
(3), the CUI banner stays in view (4), charts each named for their own test (6), and honest completeness
words (9). The panel layout (5) is measured in test_panel_layout.py and the standalone launch (12) in
test_standalone_launch.py.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import axe_check

MARGARET = "9991000372"


def largest_synthea(sandbox) -> str | None:
    dataset = sandbox.state.dataset
    people = [p for p in dataset.patients.values() if p.origin == "synthea" and "gp" in p.ids]
    if not people:
        return None
    count = lambda p: len(dataset.stores["gp"].search("Observation", {"patient": [p.ids["gp"]]})[0])  # noqa: E731
    return max(people, key=count).nhs_number


def patients(sandbox) -> list[str]:
    synthea = largest_synthea(sandbox)
    return [MARGARET] + ([synthea] if synthea else [])


def open_record(page: Page, sandbox, nhs: str) -> str:
    page.goto(f"{sandbox.sandbox_url}/ehr/launch?user=dr-patel&patient={nhs}")
    expect(page.locator("#patient-name")).to_be_visible(timeout=30_000)
    return re.match(r"(.*/r/[^/]+/)", page.url).group(1)


@pytest.fixture(params=["uk", "synthea"])
def nhs(request, sandbox) -> str:
    if request.param == "uk":
        return MARGARET
    found = largest_synthea(sandbox)
    if found is None:
        pytest.skip("needs the Synthea data (../shared/data/synthea)")
    return found


def test_banner_reads_as_the_cui_and_stays_in_view(page: Page, sandbox, nhs: str) -> None:
    page.set_viewport_size({"width": 1280, "height": 720})
    base = open_record(page, sandbox, nhs)
    name = page.locator("#patient-name").inner_text()
    assert re.match(r"^[A-Z'’\- ]+, \S", name), f"not FAMILY, Given: {name!r}"
    assert re.match(r"^\d{2}-[A-Z][a-z]{2}-\d{4}", page.locator("#born").inner_text())
    assert re.fullmatch(r"\d{3} \d{3} \d{4}", page.locator("#nhs-number").inner_text().strip())
    axe_check(page, f"record summary ({nhs})")
    page.goto(base + "encounters")
    axe_check(page, f"record: encounters ({nhs})")
    page.mouse.wheel(0, 3000)
    page.wait_for_timeout(200)
    top = page.locator("#patient-banner").bounding_box()
    assert top is not None and abs(top["y"]) < 2, f"the banner scrolled away (y={top and top['y']})"


def test_values_read_as_recorded(page: Page, sandbox, nhs: str) -> None:
    base = open_record(page, sandbox, nhs)
    page.goto(base + "results")
    table = page.locator("#table-results").inner_text()
    assert "mm[Hg]" not in table and "vital-signs" not in table and "{score}" not in table
    pressures = re.findall(r"(\d+(?:\.\d+)?)/(\d+(?:\.\d+)?) mmHg", table)
    assert pressures, "no blood pressure on the first page of results"
    assert all(float(s) > float(d) for s, d in pressures), f"diastolic shown first: {pressures[:3]}"
    noise = re.search(r"\d\.\d*(0{5,}|9{5,})\d", table)  # 104.4300001, 72.4499999: arithmetic, not the source
    assert not noise, f"float noise in a value: {noise.group(0)}"
    axe_check(page, f"record: results ({nhs})")


def test_nothing_is_cut_without_saying_so(page: Page, sandbox, nhs: str) -> None:
    base = open_record(page, sandbox, nhs)
    page.goto(base + "results")
    rows = page.locator("#table-results tbody tr:not(.more-rows)").count()
    more = page.locator("#table-results .more-rows")
    if more.count():  # a page of results: it says how many more there are, and reaching it loads them
        left = int(re.search(r"Show more \((\d+) more\)", more.inner_text()).group(1))
        more.locator("a").scroll_into_view_if_needed()
        expect(page.locator("#table-results tbody tr:not(.more-rows)")).to_have_count(rows + min(left, 100))
        axe_check(page, f"record: results with the next page loaded ({nhs})")
    else:
        assert rows <= 100
    shortened = page.locator(".list-count")
    for i in range(shortened.count()):
        expect(shortened.nth(i)).to_contain_text(re.compile(r"Showing \d+ of \d+"))


def test_current_and_past_medicines_apart(page: Page, sandbox, nhs: str) -> None:
    base = open_record(page, sandbox, nhs)
    page.goto(base + "medications")
    headings = page.locator("h3[id^=group-]").all_inner_texts()
    assert any(h.startswith(("Current medications", "Medications at time of death")) for h in headings), headings
    assert any(h.startswith("Past medications") for h in headings), headings
    current = page.locator("#table-medications-current")
    if current.count():
        statuses = current.locator(".med-status").all_inner_texts()
        assert not {"Stopped", "Completed", "Cancelled", "Entered in error"} & set(statuses), statuses
    axe_check(page, f"record: medications ({nhs})")


def test_charts_are_named_for_their_own_test(page: Page, sandbox, nhs: str) -> None:
    base = open_record(page, sandbox, nhs)
    page.goto(base + "results")
    charts = page.locator("figure.trend-card svg.trend")
    names = [
        page.evaluate(
            "el => (el.getAttribute('aria-labelledby') || '').split(' ')"
            ".map(id => document.getElementById(id)?.textContent).join(' ')",
            charts.nth(i).element_handle(),
        )
        for i in range(charts.count())
    ]
    assert len(names) >= 2 and len(set(names)) == len(names), names
    captions = page.locator("figure.trend-card figcaption a").all_inner_texts()
    for caption, name in zip(captions, names, strict=False):
        assert caption in name, f"chart {caption!r} is announced as {name!r}"
    ids = page.evaluate("[...document.querySelectorAll('[id]')].map(e => e.id)")
    assert len(ids) == len(set(ids)), "duplicate ids on the results page"


def test_honest_completeness_words(page: Page, sandbox) -> None:
    import requests

    requests.post(f"{sandbox.sandbox_url}/admin/faults/council", json={"mode": "error_500"}, timeout=10)
    base = open_record(page, sandbox, MARGARET)
    expect(page.get_by_text("Every section below may be missing what it holds")).to_be_visible()
    axe_check(page, "record summary with an organisation that could not be read")
    page.goto(base + "allergies")
    expect(page.locator("#list-gaps")).to_contain_text("Northgate City Council Social Care could not be read")
    axe_check(page, "record: allergies with an organisation that could not be read")
    assert "from every organisation" not in page.locator(".record-body").inner_text()
