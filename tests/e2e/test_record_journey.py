"""A clinician's journey through the consolidated record in Chromium, and hostile content that must not run."""

from __future__ import annotations

import base64
from urllib.parse import urlsplit

from playwright.sync_api import Page, expect

from tests.e2e.conftest import axe_check


def origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def open_from_toolbar(page: Page, sandbox, user: str, patient: str):
    page.goto(f"{sandbox.sandbox_url}/")
    page.get_by_role("button", name=f"Sign in as {user}").click()
    page.get_by_role("link", name=patient).click()
    page.get_by_role("button", name="Shared Care Record").click()
    return page.frame_locator("#scr-panel")


def test_summary_results_trend_and_encounter_filter(page: Page, sandbox, artifacts):
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.set_viewport_size({"width": 1400, "height": 1000})
    record = open_from_toolbar(page, sandbox, "Dr Anita Patel", "Margaret Ann Thompson")

    expect(record.locator("#patient-name")).to_have_text("THOMPSON, Margaret Ann (Mrs)")
    expect(record.get_by_role("heading", name="Allergies and adverse reactions")).to_be_visible()
    expect(record.get_by_text("Allergy to penicillin", exact=True)).to_be_visible()
    expect(record.get_by_text("Recorded as 'No known drug allergy'")).to_be_visible()
    axe_check(record, "record summary in the EHR's panel")
    page.screenshot(path=str(artifacts / "record-summary.png"), full_page=True)

    record.get_by_role("link", name="Results", exact=True).click()
    chart = record.locator("figure.trend-card svg.trend").first
    expect(chart).to_be_visible()
    assert record.locator("figure.trend-card").count() >= 4
    axe_check(record, "record: results")
    page.screenshot(path=str(artifacts / "record-results.png"), full_page=True)

    record.get_by_role("link", name="Encounters", exact=True).click()
    count = record.locator("#encounter-count")
    everything = int(count.inner_text().split()[0])
    record.get_by_label("Organisation").select_option(label="Northgate City Council Social Care")
    record.get_by_role("button", name="Filter").click()
    expect(count).to_contain_text("match the filters")
    filtered = int(count.inner_text().split()[0])
    assert 0 < filtered < everything
    rows = record.locator("#table-encounters tbody tr")
    for i in range(rows.count()):
        expect(rows.nth(i)).to_contain_text("Northgate City Council Social Care")
    axe_check(record, "record: encounters, filtered")
    page.screenshot(path=str(artifacts / "record-encounters-filtered.png"), full_page=True)

    allowed = {origin(sandbox.sandbox_url), origin(sandbox.viewer_url)}
    off_origin = [u for u in requested if u.startswith("http") and origin(u) not in allowed]
    assert not off_origin, off_origin


def test_script_in_narrative_or_display_text_never_runs(page: Page, sandbox, artifacts):
    hostile = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
    store = sandbox.state.dataset.stores["hospital"]
    store.add(
        {
            "resourceType": "Condition",
            "id": "hospital-cond-hostile",
            "clinicalStatus": {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
            },
            "code": {"text": f"Suspicious {hostile} problem"},
            "subject": {"reference": "Patient/hospital-pat-price"},
            "onsetDateTime": "2026-10-01",
        }
    )
    letter = f'<p>Discharge summary</p>{hostile}<p onclick="window.__pwned=3">Follow-up in clinic</p>'
    store.add(
        {
            "resourceType": "DocumentReference",
            "id": "hospital-doc-hostile-letter",
            "status": "current",
            "type": {"text": "Discharge summary (hostile test)"},
            "subject": {"reference": "Patient/hospital-pat-price"},
            "date": "2026-10-02T09:00:00Z",
            "content": [
                {"attachment": {"contentType": "text/html", "data": base64.b64encode(letter.encode()).decode()}}
            ],
        }
    )
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    record = open_from_toolbar(page, sandbox, "Dr Anita Patel", "Arthur Price")
    expect(record.get_by_text("Suspicious")).to_be_visible()  # the display text is shown, as text
    record.get_by_role("link", name="Problems", exact=True).click()
    expect(record.get_by_text("<script>window.__pwned = 1</script>", exact=False)).to_be_visible()
    axe_check(record, "record: problems with hostile text")
    record.get_by_role("link", name="Documents", exact=True).click()
    record.get_by_role("link", name="Discharge summary (hostile test)").click()
    expect(record.locator("#document-body")).to_contain_text("Follow-up in clinic")
    axe_check(record, "record: a document with hostile markup")
    record.locator("#document-body").get_by_text("Follow-up in clinic").click()
    frame = next(f for f in page.frames if f.url.startswith(sandbox.viewer_url))
    assert frame.evaluate("typeof window.__pwned") == "undefined"
    assert frame.locator("#document-body script, #document-body img").count() == 0
    assert not dialogs
    page.screenshot(path=str(artifacts / "record-hostile-content.png"), full_page=True)
