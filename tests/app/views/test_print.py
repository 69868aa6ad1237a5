"""Print and share as clinicians do (issue 11 item 8): a printed summary with the banner on every page, no
navigation and no link addresses, audited; the FHIR export labelled for what it is."""

from __future__ import annotations

import re

from app.services import services
from tests.app.record.test_record_pages import MARGARET, open_record


def test_the_printed_summary(http, sandbox) -> None:
    page = open_record(http, sandbox)
    link = re.search(r'<a href="([^"]+)" id="print-summary">Print summary</a>', page.text)
    assert link, "no Print summary link on the record"
    export = re.search(
        r'id="export-bundle">Download as FHIR Bundle</a> <span[^>]*>\(JSON for other clinical systems', page.text
    )
    assert export, "the FHIR export is not labelled for what it is"
    printed = http.get(sandbox.viewer_url + link.group(1))
    assert printed.status_code == 200
    html = printed.text
    head = re.search(r"<thead><tr><td>(.*?)</td></tr></thead>", html, re.S)
    assert head and 'id="print-banner"' in head.group(1), "the banner is not in the repeating page header"
    assert "THOMPSON, Margaret Ann (Mrs)" in head.group(1) and "999 100 0372" in head.group(1)
    assert 'class="record-nav"' not in html and "<form" not in html and "nhsuk-header" not in html
    assert "Allergy to penicillin" in html and "Metformin 500mg tablets" in html and "Chronic kidney disease" in html
    assert re.search(r"The \d+ most recent of \d+\.", html), "a shortened list does not say so"
    assert re.search(r"Printed \d{2}-[A-Z][a-z]{2}-\d{4} \d{2}:\d{2} by Dr Anita Patel", html)


def test_printing_is_audited(http, sandbox) -> None:
    page = open_record(http, sandbox)
    link = re.search(r'<a href="([^"]+)" id="print-summary">', page.text).group(1)
    http.get(sandbox.viewer_url + link)
    store = services(sandbox.viewer_app).audit_store
    events = [e.event for e in store.search(patient_nhs=MARGARET)]
    described = [ent.get("description", "") for ev in events for ent in ev.get("entity", [])]
    assert any("summary printed" in d for d in described), described[-5:]
