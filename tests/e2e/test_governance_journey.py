"""An A&E doctor with no relationship records a reason; the privacy officer sees the alert and the access."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from tests.e2e.conftest import axe_check


def test_reason_then_record_then_privacy_officer_review(page: Page, sandbox, artifacts):
    page.set_viewport_size({"width": 1300, "height": 1000})
    page.goto(f"{sandbox.sandbox_url}/")
    page.get_by_role("button", name="Sign in as Dr Rhys Evans").click()
    page.get_by_role("link", name="Edna May Clarke").click()
    page.get_by_label("Open the record").select_option("window")
    page.get_by_role("button", name="Save").click()
    with page.context.expect_page() as popup_info:
        page.get_by_role("button", name="Shared Care Record").click()
    viewer = popup_info.value
    expect(viewer.get_by_role("heading", name="Why are you looking at this record?")).to_be_visible()
    expect(viewer.get_by_text("Dementia")).to_have_count(0)
    axe_check(viewer, "access: reason for access")
    viewer.screenshot(path=str(artifacts / "governance-reason.png"), full_page=True)
    viewer.get_by_label("Coordinating this person's care").check()
    viewer.get_by_label("More detail (optional)").fill("Admitted after a fall; checking community care plan")
    viewer.get_by_role("button", name="Record reason and view").click()
    expect(viewer.locator("#patient-name")).to_have_text(re.compile(r"^CLARKE, Edna May"))
    expect(viewer.get_by_role("heading", name="Allergies and adverse reactions")).to_be_visible()
    axe_check(viewer, "record summary after a recorded reason")
    viewer.close()

    # The privacy officer launches from the hospital system and lands on the privacy console.
    page.goto(f"{sandbox.sandbox_url}/")
    page.get_by_role("button", name="Sign out").click()
    axe_check(page, "sandbox EHR: signed out")
    page.get_by_role("button", name="Sign in as Mrs Helen Wright").click()
    page.get_by_role("link", name="Margaret Ann Thompson").click()
    page.get_by_label("Open the record").select_option("window")  # preferences end with the EHR session
    page.get_by_role("button", name="Save").click()
    with page.context.expect_page() as popup_info:
        page.get_by_role("button", name="Shared Care Record").click()
    console = popup_info.value
    expect(console.get_by_role("heading", name="Alerts")).to_be_visible()
    expect(console.locator("#alerts")).to_contain_text("Dr Rhys Evans")
    expect(console.locator("#alerts")).to_contain_text("self-declared reason 'COC'")
    axe_check(console, "privacy officer: alerts")
    console.screenshot(path=str(artifacts / "governance-alerts.png"), full_page=True)
    console.get_by_role("link", name="Subject access report").click()
    axe_check(console, "privacy officer: subject access form")
    console.get_by_label("NHS number").fill("999 100 2227")
    console.get_by_role("button", name="Show report").click()
    expect(console.locator("#events")).to_contain_text("Dr Rhys Evans")
    expect(console.locator("#events")).to_contain_text("COC")
    axe_check(console, "privacy officer: subject access report")
    console.screenshot(path=str(artifacts / "governance-subject-access.png"), full_page=True)

    # The practice's inbox in the EHR got the care-team alert too.
    page.goto(f"{sandbox.sandbox_url}/")
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("button", name="Sign in as Dr Anita Patel").click()
    page.get_by_role("link", name="Inbox").click()
    for _ in range(40):  # alerts are delivered by the outbox's worker, shortly after the request
        if "Dr Rhys Evans" in page.locator("#inbox").inner_text():
            break
        page.wait_for_timeout(250)
        page.reload()
    expect(page.locator("#inbox")).to_contain_text("Dr Rhys Evans")
    axe_check(page, "sandbox EHR: inbox")
