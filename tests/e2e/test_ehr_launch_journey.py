"""From the sandbox EHR's toolbar through the SMART launch to the viewer's first page, in a real browser."""

from __future__ import annotations

from urllib.parse import urlsplit

from playwright.sync_api import Page, expect

from core.names import banner_name
from core.nhs_number import format_nhs_number
from tests.e2e.conftest import axe_check


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def sign_in_and_open(page: Page, sandbox, user_name: str, patient_name: str) -> None:
    page.goto(f"{sandbox.sandbox_url}/")
    axe_check(page, "sandbox EHR: sign-in")
    page.get_by_role("button", name=f"Sign in as {user_name}").click()
    expect(page.get_by_text(f"Signed in: {user_name}")).to_be_visible()
    axe_check(page, "sandbox EHR: patient list")
    page.get_by_role("link", name=patient_name).click()
    expect(page.get_by_role("toolbar")).to_be_visible()
    axe_check(page, "sandbox EHR: patient page")


def banner_name_of(sandbox, person) -> str:
    """The CUI banner form of the person's name, from the sandbox's own record of them."""
    org = next(iter(person.ids))
    return banner_name(sandbox.state.dataset.stores[org].read("Patient", person.ids[org]).get("name"))


def test_toolbar_launch_embedded_in_the_ehr_page(page: Page, sandbox, artifacts):
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    person = next(p for p in sandbox.state.dataset.sorted_patients() if p.origin == "uk" and "gp" in p.ids)
    sign_in_and_open(page, sandbox, "Dr Anita Patel", person.name)
    page.get_by_role("button", name="Shared Care Record").click()

    frame = page.frame_locator("#scr-panel")
    expect(frame.locator("#patient-name")).to_have_text(banner_name_of(sandbox, person))
    expect(frame.locator("#nhs-number")).to_have_text(format_nhs_number(person.nhs_number))
    expect(frame.locator("#user-name")).to_have_text("Dr Anita Patel")
    launch = sandbox.state.recent_launches()[0]
    assert launch.user_id == "dr-patel" and launch.nhs_number == person.nhs_number
    assert [t.kind for t in launch.tokens] == ["access_token", "id_token"]
    axe_check(frame, "record summary in the EHR's panel")
    page.screenshot(path=str(artifacts / "ehr-embedded-launch.png"), full_page=True)

    allowed = {origin(sandbox.sandbox_url), origin(sandbox.viewer_url)}
    off_origin = [u for u in requested if not u.startswith(("about:", "data:")) and origin(u) not in allowed]
    assert not off_origin, off_origin


def test_toolbar_launch_in_a_new_window(page: Page, sandbox, artifacts):
    person = next(p for p in sandbox.state.dataset.sorted_patients() if p.origin == "uk" and "hospital" in p.ids)
    sign_in_and_open(page, sandbox, "Dr Rhys Evans", person.name)
    page.get_by_label("Open the record").select_option("window")
    page.get_by_role("button", name="Save").click()
    with page.context.expect_page() as popup_info:
        page.get_by_role("button", name="Shared Care Record").click()
    popup = popup_info.value
    popup.wait_for_load_state()
    expect(popup.locator("#patient-name")).to_have_text(banner_name_of(sandbox, person))
    assert popup.url.startswith(f"{sandbox.viewer_url}/r/")
    assert sandbox.state.recent_launches()[0].iss == sandbox.fhir_base("hospital")
    axe_check(popup, "record summary in a window of its own")
    popup.screenshot(path=str(artifacts / "ehr-new-window-launch.png"))


def test_inspector_lists_the_launch(page: Page, sandbox, artifacts):
    person = next(p for p in sandbox.state.dataset.sorted_patients() if p.origin == "uk" and "gp" in p.ids)
    sign_in_and_open(page, sandbox, "Mrs Grace Okafor", person.name)
    page.get_by_role("button", name="Shared Care Record").click()
    expect(page.frame_locator("#scr-panel").locator("#patient-name")).to_have_text(banner_name_of(sandbox, person))
    page.goto(f"{sandbox.sandbox_url}/inspector")
    expect(page.locator("#launches")).to_contain_text("Mrs Grace Okafor")
    axe_check(page, "sandbox: launch inspector")
    page.locator("#launches a").first.click()
    expect(page.get_by_role("heading", name="Context")).to_be_visible()
    axe_check(page, "sandbox: launch detail")
    page.screenshot(path=str(artifacts / "inspector-launch.png"), full_page=True)
