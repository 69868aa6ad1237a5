"""Printing in Chromium (issue 11 item 8): print media hides navigation and forms and adds no link addresses;
the printed summary's banner is a repeating page header."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.e2e.conftest import axe_check


def test_record_pages_print_without_navigation_or_link_addresses(page: Page, sandbox, artifacts) -> None:
    page.goto(f"{sandbox.sandbox_url}/ehr/launch?user=dr-patel&patient=9991000372")
    expect(page.locator("#patient-name")).to_be_visible()
    page.emulate_media(media="print")
    assert not page.locator(".record-nav").is_visible() and not page.locator("#logout").is_visible()
    after = page.evaluate(
        "[...document.querySelectorAll('main a[href]')].map(a => getComputedStyle(a, '::after').content)"
    )
    assert after and all(c in ("none", "normal") for c in after), set(after)
    expect(page.locator("#patient-banner")).to_be_visible()

    page.emulate_media(media="screen")
    page.locator("#print-summary").click()
    expect(page.locator("#print-banner")).to_contain_text("THOMPSON, Margaret Ann (Mrs)")
    axe_check(page, "record: print summary")
    page.emulate_media(media="print")
    display = page.evaluate("getComputedStyle(document.querySelector('.print-layout > thead')).display")
    assert display == "table-header-group"
    pdf = page.pdf(format="A4")
    pages = len(re.findall(rb"/Type\s*/Page[^s]", pdf))
    # Margaret's summary runs over several pages: Chromium repeats a table-header-group at the top of each.
    assert pdf.startswith(b"%PDF") and pages >= 2, f"{pages} pages"
    (artifacts / "printed-summary.pdf").write_bytes(pdf)
