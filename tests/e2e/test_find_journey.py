"""Finding things fast in Chromium: the search box in the record panel, grouped results, a hit that lands on its row."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.e2e.conftest import axe_check
from tests.e2e.test_record_journey import open_from_toolbar


def test_search_box_finds_grouped_hits_and_a_hit_lands_on_its_row(page: Page, sandbox, artifacts):
    blocked: list[str] = []
    page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
    page.set_viewport_size({"width": 1400, "height": 1000})
    record = open_from_toolbar(page, sandbox, "Dr Anita Patel", "Margaret Ann Thompson")
    expect(record.locator("#patient-name")).to_have_text("THOMPSON, Margaret Ann (Mrs)")

    box = record.get_by_role("searchbox", name="Search this record")
    box.fill("diabetes")
    box.press("Enter")
    expect(record.get_by_role("heading", name="Search results")).to_be_visible()
    expect(record.locator("#search-count")).to_contain_text("for “diabetes” in 2 sections")
    headings = record.locator("h3[id^='search-']")
    expect(headings).to_have_count(2)
    expect(headings.nth(0)).to_have_text(re.compile(r"^Problems \(1\)$"))
    expect(headings.nth(1)).to_have_text(re.compile(r"^Reports \(\d+\)$"))
    expect(box).to_have_value("diabetes")  # the box keeps what was searched
    axe_check(record, "record: search results")
    page.screenshot(path=str(artifacts / "record-search.png"), full_page=True)

    hit = record.locator("#hits-problems").get_by_role("link", name="Type 2 diabetes mellitus")
    anchor = hit.get_attribute("href").split("#", 1)[1]
    assert re.fullmatch(r"row-[0-9a-f]{12}", anchor), anchor
    hit.click()
    expect(record.get_by_role("heading", name="Problems and diagnoses", exact=True)).to_be_visible()
    frame = next(f for f in page.frames if f.url.startswith(sandbox.viewer_url))
    assert re.search(rf"/problems#{anchor}$", frame.url), frame.url
    row = record.locator(f"#{anchor}")
    expect(row).to_contain_text("Type 2 diabetes mellitus")
    expect(row).to_be_in_viewport()  # the browser scrolled to the row the hit named
    axe_check(record, "record: problems, at a search hit's row")
    assert not blocked, blocked
