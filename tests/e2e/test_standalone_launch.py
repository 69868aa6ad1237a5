"""Standalone launch in a real browser: the viewer's start page, the sandbox's sign-in form, Allow, the record.

Only a browser submits the page's own form (its action, its hidden fields). The sign-in form once posted back
to its own URL, query string included, so every parameter arrived twice and Allow ended at "Multiple
'response_type' in request" while the HTTP-level tests, posting to the bare URL, passed.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from playwright.sync_api import Page, Request, expect

from core.nhs_number import format_nhs_number
from tests.e2e.conftest import axe_check

ARTHUR = "9991003339"  # at the gp and the hospital


def test_standalone_launch_reaches_the_record(page: Page, sandbox, artifacts):
    person = sandbox.state.dataset.patient(ARTHUR)
    posts: list[Request] = []
    page.on("request", lambda r: posts.append(r) if r.method == "POST" else None)

    page.goto(f"{sandbox.viewer_url}/")
    axe_check(page, "viewer: start")
    page.get_by_role("link", name="Sign in with Northgate Hospitals EPR (sandbox)").click()
    expect(page.get_by_role("heading", name="Sign in to Northgate Hospitals")).to_be_visible()
    axe_check(page, "sandbox: authorize (standalone launch)")
    assert page.url.startswith(f"{sandbox.sandbox_url}/auth/authorize?")
    page.get_by_label("Sign in as").select_option("dr-evans")
    page.get_by_label("Patient").select_option(person.nhs_number)
    page.get_by_role("button", name="Allow").click()

    # Outside an EHR there is no encounter: the A&E doctor records a reason, then sees the record.
    page.wait_for_url(f"{sandbox.viewer_url}/r/**")
    expect(page.locator("body")).not_to_contain_text("Multiple")
    (allow,) = [r for r in posts if urlsplit(r.url).path == "/auth/authorize"]
    assert urlsplit(allow.url).query == "", "the authorization parameters must travel once, in the form body"
    expect(page.locator("#nhs-number")).to_have_text(format_nhs_number(person.nhs_number))
    axe_check(page, "access: reason for access")
    page.get_by_label("Emergency treatment").check()
    page.get_by_role("button", name="Record reason and view").click()

    expect(page.get_by_role("heading", name="Allergies and adverse reactions")).to_be_visible()
    expect(page.locator("#user-name")).to_have_text("Dr Rhys Evans")
    expect(page.locator("body")).not_to_contain_text("response_type")
    axe_check(page, "record summary after a standalone launch")
    page.screenshot(path=str(artifacts / "standalone-launch.png"), full_page=True)
