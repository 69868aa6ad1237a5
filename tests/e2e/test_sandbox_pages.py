"""The sandbox's own pages in a real browser: search the patient list, flip a fault and reset it in the inspector,
and no region that scrolls sideways is out of a keyboard's reach."""

from __future__ import annotations

import re

from playwright.sync_api import Page, expect

from core.nhs_number import format_nhs_number
from tests.e2e.conftest import axe_check

HOSPITAL = "Northgate Hospitals NHS Foundation Trust"

# Elements the browser lets scroll sideways (their content is wider than they are) that a keyboard cannot reach.
UNREACHABLE_SCROLLERS = """() => [...document.querySelectorAll('body *')].filter(el => {
    const overflow = getComputedStyle(el).overflowX;
    return (overflow === 'auto' || overflow === 'scroll') && el.scrollWidth > el.clientWidth
        && !(el.tabIndex >= 0 && (el.getAttribute('aria-label') || el.getAttribute('aria-labelledby')));
}).map(el => el.outerHTML.slice(0, 120))"""
SCROLLERS = """() => [...document.querySelectorAll('body *')].filter(el => {
    const overflow = getComputedStyle(el).overflowX;
    return (overflow === 'auto' || overflow === 'scroll') && el.scrollWidth > el.clientWidth;
}).length"""


def test_search_the_patient_list(page: Page, sandbox, artifacts):
    people = sandbox.state.dataset.patients
    priya = next(p for p in people.values() if p.name == "Priya Sharma")
    page.goto(f"{sandbox.sandbox_url}/")
    page.get_by_role("button", name="Sign in as Dr Anita Patel").click()
    expect(page.locator("#patient-count")).to_have_text(f"Showing {len(people)} of {len(people)} patients.")
    axe_check(page, "sandbox EHR: patient list")

    search = page.get_by_role("searchbox", name="Search patients")
    search.fill("objection")
    search.press("Enter")  # a plain GET form: no script involved
    expect(page).to_have_url(re.compile(r"\?q=objection$"))
    expect(page.locator("#patient-count")).to_have_text(f"Showing 1 of {len(people)} patients matching “objection”.")
    row = page.locator("#patient-list tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("Objection to sharing")
    expect(page.get_by_role("link", name="Oliver James Bennett")).to_be_visible()
    axe_check(page, "sandbox EHR: patient list, searched")

    page.get_by_role("searchbox", name="Search patients").fill(format_nhs_number(priya.nhs_number))
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.locator("#patient-list tbody tr")).to_have_count(1)
    expect(page.locator("#patient-list")).to_contain_text("Sensitive items withheld")
    page.screenshot(path=str(artifacts / "sandbox-patient-search.png"), full_page=True)

    page.get_by_role("searchbox", name="Search patients").fill("nobody by this name")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.locator("#no-match")).to_contain_text("No patients match “nobody by this name”")
    expect(page.locator("#patient-list")).to_have_count(0)
    axe_check(page, "sandbox EHR: patient list, no match")
    page.get_by_role("link", name="Show all patients").first.click()
    expect(page.locator("#patient-list tbody tr")).to_have_count(len(people))

    # The patient link still opens the patient, whose name is the page's heading.
    page.get_by_role("link", name="Priya Sharma").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Patient: Priya Sharma")
    axe_check(page, "sandbox EHR: patient page")


def test_flip_a_fault_and_reset_it_in_the_inspector(page: Page, sandbox, artifacts):
    page.goto(f"{sandbox.sandbox_url}/inspector")
    switches = page.get_by_role("heading", name="Fault switches")
    launches = page.get_by_role("heading", name="Recent launches")
    assert switches.bounding_box()["y"] < launches.bounding_box()["y"]  # the switches come first
    axe_check(page, "sandbox: launch inspector")

    page.get_by_label(f"Behaviour of {HOSPITAL}").select_option("error_500")
    page.get_by_role("button", name=f"Apply to {HOSPITAL}", exact=True).click()
    confirmation = page.get_by_role("alert")
    expect(confirmation).to_contain_text(
        f"{HOSPITAL} (hospital) FHIR server: now answers 500 (internal server error) to every request "
        "(before: answers normally)."
    )
    assert sandbox.state.faults["hospital"].mode == "error_500"
    expect(page.get_by_label(f"Behaviour of {HOSPITAL}")).to_have_value("error_500")

    page.get_by_role("button", name="turn on deny_consent").click()
    expect(page.get_by_role("alert")).to_contain_text("Simulated authorisation error deny_consent: now on")
    axe_check(page, "sandbox: launch inspector with a confirmation")
    page.screenshot(path=str(artifacts / "sandbox-inspector-fault.png"), full_page=True)

    page.get_by_role("button", name="Reset all faults").click()
    confirmation = page.get_by_role("alert")
    expect(confirmation).to_contain_text("All faults reset to the sandbox configuration.")
    expect(confirmation.get_by_role("listitem")).to_have_text(
        [
            f"{HOSPITAL} (hospital) FHIR server: now answers normally (before: answers 500 (internal server error) "
            "to every request).",
            re.compile(r"^Simulated authorisation error deny_consent: now off"),
        ]
    )
    assert sandbox.state.faults["hospital"].mode == "ok" and not sandbox.state.switches
    expect(page.get_by_label(f"Behaviour of {HOSPITAL}")).to_have_value("ok")

    page.reload()
    expect(page.get_by_role("alert")).to_have_count(0)  # a confirmation is said once


def test_sideways_scrolling_regions_are_reachable_by_keyboard(page: Page, sandbox):
    page.set_viewport_size({"width": 360, "height": 740})  # a phone: the wide tables scroll sideways
    checked = 0
    page.goto(f"{sandbox.sandbox_url}/")
    assert page.evaluate(UNREACHABLE_SCROLLERS) == []
    checked += page.evaluate(SCROLLERS)
    page.get_by_role("button", name="Sign in as Dr Rhys Evans").click()
    for url in ("/", "/?q=trends", "/inspector"):
        page.goto(f"{sandbox.sandbox_url}{url}")
        assert page.evaluate(UNREACHABLE_SCROLLERS) == [], url
        axe_check(page, f"sandbox at phone width: {url}")
        checked += page.evaluate(SCROLLERS)
    assert checked >= 3  # the check saw real scrolling regions, not none

    # Once focused, the patient list's region scrolls with the arrow keys.
    page.goto(f"{sandbox.sandbox_url}/")
    region = page.get_by_role("region", name="Patient list")
    region.focus()
    expect(region).to_be_focused()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.wait_for_function("() => document.querySelector('.sandbox-scroll').scrollLeft > 0")
