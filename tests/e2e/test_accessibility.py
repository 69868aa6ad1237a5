"""Accessibility in Chromium: axe-core (WCAG 2.1 A and AA, plus best practice) finds nothing on any page a GP,
a privacy officer or a sandbox user opens, and the keyboard reaches the skip link first, then the record's
navigation in order. The other journeys check the pages they visit with the same helper (conftest.axe_check).
"""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.conftest import axe_check

MARGARET = "9991000372"
# Every section a GP may open from the record navigation (the catalogue may add more: those are checked too).
GP_SECTIONS = {
    "Summary",
    "Problems",
    "Medications",
    "Allergies",
    "Encounters",
    "Results",
    "Immunisations",
    "Procedures",
    "Documents",
    "Care team and services",
}
PRIVACY_PAGES = (
    "Alerts",
    "Audit search",
    "Subject access report",
    "Training attestations",
    "Access register",
    "Access requests",
)


def open_in_a_window(page: Page, sandbox, user: str, patient: str, *, check: bool = False) -> Page:
    """Sign in to the sandbox EHR, open the patient, launch the viewer in a window of its own."""
    page.goto(f"{sandbox.sandbox_url}/")
    if check:
        axe_check(page, "sandbox EHR: sign-in")
    page.get_by_role("button", name=f"Sign in as {user}").click()
    expect(page.get_by_text(f"Signed in: {user}")).to_be_visible()
    if check:
        axe_check(page, "sandbox EHR: patient list")
    page.get_by_role("link", name=patient).click()
    expect(page.get_by_role("toolbar")).to_be_visible()
    page.get_by_label("Open the record").select_option("window")
    page.get_by_role("button", name="Save").click()
    if check:
        axe_check(page, "sandbox EHR: patient page")
    with page.context.expect_page() as popup_info:
        page.get_by_role("button", name="Shared Care Record").click()
    viewer = popup_info.value
    viewer.wait_for_load_state()
    return viewer


def test_every_page_a_gp_opens_and_the_sandbox_pages(page: Page, sandbox) -> None:
    margaret = sandbox.state.dataset.patient(MARGARET)
    viewer = open_in_a_window(page, sandbox, "Dr Anita Patel", margaret.name, check=True)
    expect(viewer.locator("#patient-name")).to_have_text("THOMPSON, Margaret Ann (Mrs)")
    axe_check(viewer, "record: Summary")

    nav = viewer.get_by_role("navigation", name="Record sections")
    labels = nav.get_by_role("link").all_inner_texts()
    assert set(labels) >= GP_SECTIONS, sorted(GP_SECTIONS - set(labels))
    for label in labels[1:]:
        link = nav.get_by_role("link", name=label, exact=True)
        link.click()
        expect(link).to_have_attribute("aria-current", "page")
        axe_check(viewer, f"record: {label}")

    nav.get_by_role("link", name="Results", exact=True).click()
    viewer.locator("figure.trend-card figcaption a").first.click()
    expect(viewer.locator("svg.trend")).to_be_visible()
    axe_check(viewer, "record: a trend")

    nav.get_by_role("link", name="Documents", exact=True).click()
    viewer.locator("ul.documents a").first.click()
    expect(viewer.locator("#document-body")).to_be_visible()
    axe_check(viewer, "record: a document")

    viewer.get_by_role("searchbox", name="Search this record").fill("diabetes")
    viewer.get_by_role("searchbox", name="Search this record").press("Enter")
    expect(viewer.get_by_role("heading", name="Search results")).to_be_visible()
    axe_check(viewer, "record: search results")

    viewer.locator("#print-summary").click()
    expect(viewer.locator("#print-banner")).to_be_visible()
    axe_check(viewer, "record: print summary")
    viewer.close()

    # The sandbox's own pages, still signed in as the GP.
    page.get_by_role("link", name="Inbox").click()
    expect(page.get_by_role("heading", level=1)).to_be_visible()
    axe_check(page, "sandbox EHR: inbox")
    page.get_by_role("link", name="Launch inspector").click()
    expect(page.locator("#launches")).to_contain_text("Dr Anita Patel")
    axe_check(page, "sandbox: launch inspector")
    page.locator("#launches a").first.click()
    expect(page.get_by_role("heading", name="Context")).to_be_visible()
    axe_check(page, "sandbox: launch detail")

    # Signing out of the EHR loads the viewer's front-channel logout page in a hidden frame.
    page.goto(f"{sandbox.sandbox_url}/")
    page.get_by_role("button", name="Sign out").click()
    expect(page.locator("#signed-out")).to_be_visible()
    axe_check(page, "sandbox EHR: signed out")
    logout = page.frame_locator("iframe.front-channel-logout").first
    expect(logout.locator("#front-channel-logout")).to_contain_text("has ended")
    axe_check(logout, "viewer: front-channel logout")

    # The viewer's start page, and the sandbox's authorisation page a standalone launch reaches.
    page.goto(f"{sandbox.viewer_url}/")
    axe_check(page, "viewer: start")
    page.goto(f"{sandbox.viewer_url}/start?iss={sandbox.fhir_base('hospital')}")
    expect(page.get_by_role("heading", name="Sign in to Northgate Hospitals")).to_be_visible()
    axe_check(page, "sandbox: authorize (standalone launch)")


def test_every_privacy_officer_page(page: Page, sandbox) -> None:
    margaret = sandbox.state.dataset.patient(MARGARET)
    console = open_in_a_window(page, sandbox, "Mrs Helen Wright", margaret.name)
    expect(console.get_by_role("heading", name="Alerts")).to_be_visible()
    axe_check(console, "privacy officer: landing page")
    nav = console.get_by_role("navigation", name="Privacy officer")
    links = dict(nav.get_by_role("link").evaluate_all("links => links.map(a => [a.textContent.trim(), a.href])"))
    assert set(PRIVACY_PAGES) <= set(links), links
    for label, href in links.items():  # the access register pages have a navigation of their own
        console.goto(href)
        expect(console.get_by_role("heading", level=1)).to_be_visible()
        axe_check(console, f"privacy officer: {label}")
    console.goto(links["Subject access report"])
    console.get_by_label("NHS number").fill(margaret.nhs_number)
    console.get_by_role("button", name="Show report").click()
    expect(console.locator("#events")).to_be_visible()
    axe_check(console, "privacy officer: subject access report for Margaret")


def test_tab_reaches_the_skip_link_then_the_record_navigation_in_order(page: Page, sandbox) -> None:
    page.goto(f"{sandbox.sandbox_url}/ehr/launch?user=dr-patel&patient={MARGARET}")
    expect(page.locator("#patient-name")).to_be_visible()
    nav_links = page.get_by_role("navigation", name="Record sections").get_by_role("link").all_inner_texts()

    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to main content")
    expect(skip).to_be_focused()
    expect(skip).to_be_in_viewport()  # shown when focused

    focused: list[tuple[bool, str]] = []  # (in the record navigation, text) of each element Tab lands on
    for _ in range(80):
        page.keyboard.press("Tab")
        focused.append(
            page.evaluate(
                "() => [!!document.activeElement.closest('nav.record-nav'), document.activeElement.innerText.trim()]"
            )
        )
        if focused[-1] == [True, nav_links[-1]]:
            break
    in_nav = [i for i, (is_nav, _) in enumerate(focused) if is_nav]
    assert [focused[i][1] for i in in_nav] == nav_links, focused
    assert in_nav == list(range(in_nav[0], in_nav[0] + len(nav_links))), "the navigation links are not one run"

    # The skip link moves the keyboard past the header: the next Tab lands inside the main content.
    page.reload()
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    assert page.evaluate("() => !!document.activeElement.closest('main#maincontent')")


def test_the_check_names_what_is_wrong_and_where(page: Page, sandbox) -> None:
    """The helper itself: a page made inaccessible on purpose fails with the rule, the element and the URL."""
    page.goto(f"{sandbox.viewer_url}/")
    page.evaluate(  # through the DOM: the page's CSP refuses inline style attributes
        """() => {
            document.querySelector('main').insertAdjacentHTML('beforeend',
                '<img id="no-alt" src="data:,"><p id="faint">Hard to read</p>');
            document.getElementById('faint').style.color = '#ccc';
        }"""
    )
    with pytest.raises(AssertionError) as failed:
        axe_check(page, "viewer: start, spoiled")
    report = str(failed.value)
    assert "image-alt [critical]" in report and "#no-alt" in report, report
    assert "color-contrast [serious]" in report and "#faint" in report, report
    assert f"viewer: start, spoiled ({sandbox.viewer_url}/)" in report, report
