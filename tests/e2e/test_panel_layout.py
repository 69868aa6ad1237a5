"""Key facts at a glance in the EHR's panel (issue 11 item 5), measured in Chromium by element bounding boxes.

At 1366×768 inside the sandbox EHR's embedded panel, alerts, allergies, current medications and active
problems must start within the panel's first screen; the viewer fills the panel's width; the record
navigation stays on one line. At 420 px wide, the tables reflow so the organisation column stays in view.
"""

from __future__ import annotations

from playwright.sync_api import FrameLocator, Page, expect

from core.names import banner_name
from tests.e2e.conftest import axe_check

LAPTOP = {"width": 1366, "height": 768}
PHONE = {"width": 420, "height": 860}


def open_in_panel(page: Page, sandbox, user: str, nhs: str) -> FrameLocator:
    person = sandbox.state.dataset.patient(nhs)
    page.goto(f"{sandbox.sandbox_url}/")
    page.get_by_role("button", name=f"Sign in as {user}").click()
    page.get_by_role("link", name=person.name).click()
    page.get_by_role("button", name="Shared Care Record").click()
    frame = page.frame_locator("#scr-panel")
    org = next(iter(person.ids))
    name = banner_name(sandbox.state.dataset.stores[org].read("Patient", person.ids[org]).get("name"))
    expect(frame.locator("#patient-name")).to_have_text(name)
    return frame


def box(locator) -> dict:
    found = locator.bounding_box()
    assert found is not None, f"{locator} is not rendered"
    return found


def first_screen_facts(page: Page, frame: FrameLocator, artifacts, shot: str) -> None:
    page.screenshot(path=str(artifacts / shot))
    panel = box(page.locator("#scr-panel"))
    assert panel["height"] >= 500, f"the EHR's panel is only {panel['height']:.0f} px tall"
    bottom = panel["y"] + panel["height"]
    for heading in ("#allergies-h", "#meds-h", "#problems-h"):
        top = box(frame.locator(heading))["y"]
        assert top < bottom - 20, f"{heading} starts at {top - panel['y']:.0f} px, below the panel's first screen"
    if frame.locator("#alerts-h").count():
        assert box(frame.locator("#alerts-h"))["y"] < bottom - 20
    first_allergy = frame.locator("section[aria-labelledby=allergies-h] :is(.card-list > li, p.empty)").first
    assert box(first_allergy)["y"] < bottom, "no allergy line (or 'no allergies recorded') in the first screen"


def test_key_facts_in_the_first_screen_of_the_panel(page: Page, sandbox, artifacts) -> None:
    page.set_viewport_size(LAPTOP)
    frame = open_in_panel(page, sandbox, "Dr Anita Patel", "9991000372")
    first_screen_facts(page, frame, artifacts, "panel-summary-1366.png")
    axe_check(frame, "record summary in the EHR's panel at 1366x768")

    panel = box(page.locator("#scr-panel"))
    body = box(frame.locator(".record-body"))
    assert body["width"] >= panel["width"] - 80, (
        f"the record uses {body['width']:.0f} of the panel's {panel['width']:.0f} px"
    )
    links = frame.locator(".record-nav a")
    tops = {round(box(links.nth(i))["y"]) for i in range(links.count())}
    assert len(tops) == 1, f"the record navigation wraps onto {len(tops)} lines"


def test_key_facts_first_for_the_largest_synthea_patient(page: Page, sandbox, artifacts) -> None:
    people = [p for p in sandbox.state.dataset.patients.values() if p.origin == "synthea" and "gp" in p.ids]
    if not people:
        import pytest

        pytest.skip("needs the Synthea data (../shared/data/synthea)")
    largest = max(
        people,
        key=lambda p: len(sandbox.state.dataset.stores["gp"].search("Observation", {"patient": [p.ids["gp"]]})[0]),
    )
    page.set_viewport_size(LAPTOP)
    frame = open_in_panel(page, sandbox, "Dr Anita Patel", largest.nhs_number)
    first_screen_facts(page, frame, artifacts, "panel-summary-synthea-1366.png")
    axe_check(frame, "record summary of the largest Synthea patient in the EHR's panel")


def test_tables_keep_the_organisation_in_view_at_420px(page: Page, sandbox, artifacts) -> None:
    page.set_viewport_size(PHONE)
    sandbox_url = sandbox.sandbox_url
    page.goto(f"{sandbox_url}/ehr/launch?user=dr-patel&patient=9991000372")
    expect(page.locator("#patient-name")).to_be_visible()
    for section in ("medications", "problems", "encounters", "results"):
        page.goto(page.url.split("/r/")[0] + "/r/" + page.url.split("/r/")[1].split("/")[0] + "/" + section)
        org = page.locator("table.record-table tbody tr:not(.more-rows) td:last-child").first
        cell = box(org)
        assert cell["x"] >= 0 and cell["x"] + min(cell["width"], 60) <= PHONE["width"], (
            f"{section}: the organisation column starts at x={cell['x']:.0f}, outside a {PHONE['width']} px screen"
        )
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"] + 1, f"{section}: the page is {width} px wide at {PHONE['width']} px"
        axe_check(page, f"record: {section} at {PHONE['width']} px")
    page.screenshot(path=str(artifacts / "record-420.png"), full_page=False)
