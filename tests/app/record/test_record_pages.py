"""The consolidated record over real HTTP: faults per organisation, conflicts, completeness, export, headers."""

from __future__ import annotations

import re
import time
from datetime import datetime
from urllib.parse import urlsplit

import pytest
from fhirclient.models.fhirelementfactory import FHIRElementFactory

from core.nhs_number import format_nhs_number

MARGARET = "9991000372"  # gp, hospital, community, council; conflicts and trends
DAVID = "9991002596"  # demographic mismatch between gp and hospital
SOPHIE = "9991002960"  # hospital only
SOURCES = ("gp", "hospital", "community", "council")


@pytest.fixture
def viewer(sandbox):
    yield sandbox.viewer_app
    sandbox.viewer_app.extensions["launch"].discovery.clear()


def open_record(http, sandbox, user="dr-patel", nhs=MARGARET):
    resp = http.get(f"{sandbox.sandbox_url}/ehr/launch", params={"user": user, "patient": nhs})
    assert resp.status_code == 200, resp.text[:2000]
    return resp


def wait_complete(http, url: str, timeout: float = 15) -> tuple[str, float]:
    """Poll the progress fragment as htmx would, until the viewer says everything has arrived."""
    started = time.monotonic()
    ctx = re.search(r"/r/([^/]+)/", url).group(1)
    base = url.split("/r/")[0]
    while time.monotonic() - started < timeout:
        resp = http.get(f"{base}/r/{ctx}/progress", headers={"HX-Request": "true"})
        if resp.headers.get("HX-Refresh") == "true":
            return http.get(url).text, time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError("the record never completed")


def set_fault(http, sandbox, org, **faults):
    http.post(f"{sandbox.sandbox_url}/admin/faults/{org}", json=faults).raise_for_status()


def viewer_requests(sandbox, since: float):
    return [r for r in sandbox.state.requests if r.at >= since]


# ---- the whole record ---------------------------------------------------------------------------------


def test_summary_shows_every_organisation_with_provenance(http, sandbox, viewer):
    started = time.time()
    page = open_record(http, sandbox).text
    for name, ods in (
        ("Riverside Medical Practice", "Y01001"),
        ("Northgate Hospitals NHS Foundation Trust", "RX9"),
        ("Northgate Community and Mental Health NHS Trust", "RY8"),
        ("Northgate City Council Social Care", "L90001"),
    ):
        assert f'<span class="source__name">{name}</span> ({ods}):' in page
    assert "Organisations checked (4 with records)" in page
    for section in (
        "Allergies and adverse reactions",
        "Active problems",
        "Current medications",
        "Recent encounters",
        "Latest results",
        "Involved in care",
    ):
        assert section in page
    assert "Adult social care" in page  # social care involvement from the council
    # Read only: the viewer sent nothing but GET to any organisation, each with a request id.
    sent = viewer_requests(sandbox, started)
    assert sent and {r.method for r in sent} == {"GET"}
    assert all(r.request_id for r in sent)
    assert {r.org_id for r in sent} == set(SOURCES)


def test_same_fact_from_two_organisations_is_one_row_listing_both(http, sandbox, viewer):
    resp = open_record(http, sandbox)
    meds = http.get(resp.url + "medications").text
    metformin = re.search(
        r'<tr id="row-\w+"[^>]*>(?:(?!</tr>).)*Metformin 500mg tablets(?:(?!</tr>).)*</tr>', meds, re.S
    )
    assert metformin, "metformin row missing"
    assert "Riverside Medical Practice" in metformin.group(0) and "Northgate Hospitals" in metformin.group(0)
    problems = http.get(resp.url + "problems").text
    assert problems.count("Type 2 diabetes mellitus") == 1


def test_conflicts_are_flagged(http, sandbox, viewer):
    page = open_record(http, sandbox).text
    assert "Recorded as &#39;No known drug allergy&#39; at Northgate Hospitals NHS Foundation Trust" in page
    assert "Allergies are recorded elsewhere: Allergy to penicillin at Riverside Medical Practice" in page
    assert "Different dose or strength recorded elsewhere: Apixaban 2.5mg tablets" in page
    assert "Different dose or strength recorded elsewhere: Apixaban 5mg tablets" in page


def test_demographic_mismatch_is_warned(http, sandbox, viewer):
    page = open_record(http, sandbox, nhs=DAVID).text
    assert "Check this is the right person:" in page
    assert (
        "Date of birth differs between organisations: 12-Mar-1970 at Riverside Medical Practice; 03-Dec-1970 at "
        "Northgate Hospitals NHS Foundation Trust." in page
    )


def test_patient_known_to_one_organisation(http, sandbox, viewer):
    page = open_record(http, sandbox, user="dr-evans", nhs=SOPHIE).text
    # Other tests may have traced her elsewhere (a demographics-only registration): count what is there now.
    holders = len(sandbox.state.dataset.patient(SOPHIE).ids)
    assert f"Organisations checked ({holders} with records)" in page
    assert page.count("no record of this person") == 4 - holders
    assert "banner--error" not in page  # having no record is not an error
    assert "Fracture" in page or "fracture" in page  # the one organisation's record is shown


def test_patient_without_a_valid_nhs_number(http, sandbox, viewer):
    store = sandbox.state.dataset.stores["gp"]
    store.add(
        {
            "resourceType": "Patient",
            "id": "gp-no-nhs",
            "name": [{"family": "Unverified", "given": ["Alex"]}],
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "1234567890"}],
        }
    )
    launch = sandbox.state.create_launch(
        user_id="dr-patel",
        org_id="gp",
        iss=sandbox.fhir_base("gp"),
        nhs_number="",
        patient_id="gp-no-nhs",
        encounter_id=None,
        need_patient_banner=True,
        launch_url="",
        source="ehr",
    )
    started = time.time()
    resp = http.get(f"{sandbox.viewer_url}/launch", params={"iss": sandbox.fhir_base("gp"), "launch": launch.id})
    assert resp.status_code == 200
    assert 'id="no-nhs-number"' in resp.text and "only ever matched by NHS number" in resp.text
    assert "not a valid NHS number" in resp.text
    assert not [r for r in viewer_requests(sandbox, started) if r.org_id != "gp"], "nothing fetched elsewhere"


# ---- faults: the rest of the record still renders, with the right banner ---------------------------------------


@pytest.mark.parametrize(
    ("fault", "banner"),
    [
        (
            {"mode": "down"},
            "Records from Northgate Community and Mental Health NHS Trust are not shown:</strong> "
            "the organisation could not be reached",
        ),
        ({"mode": "error_500"}, "are not shown:</strong> the organisation returned an error (HTTP 500)"),
        (
            {"mode": "malformed_json"},
            "are not shown:</strong> the organisation returned data that could not be read (malformed)",
        ),
        ({"latency_ms": 8000}, "are not shown:</strong> the organisation did not respond in time"),
        (
            {"mode": "foreign_next"},
            "may be incomplete:</strong> the organisation sent a link to another server, which was not followed",
        ),
        ({"mode": "paging_loop"}, "may be incomplete:</strong> the organisation kept sending the same page"),
    ],
    ids=["down", "500", "malformed", "slow", "foreign-next", "paging-loop"],
)
def test_fault_at_one_organisation(http, sandbox, viewer, monkeypatch, fault, banner):
    if fault.get("mode") in ("foreign_next", "paging_loop"):
        # Make the community's lists span pages so the hostile next link is actually reached.
        monkeypatch.setattr("app.record.fetch.PAGE_SIZE", 2)
    set_fault(http, sandbox, "community", **fault)
    started = time.time()
    first = open_record(http, sandbox)
    page, waited = wait_complete(http, first.url)
    assert banner in page, re.findall(r'<div class="banner[^>]*>.*?</div>', page, re.S)
    # Everyone else's record is there.
    assert "Allergy to penicillin" in page and "Adult social care" in page
    total = time.time() - started
    assert total < 5.0 + 4.0, f"the record took {total:.1f}s with a 5 s deadline"
    if fault.get("mode") == "foreign_next":
        assert not [r for r in viewer_requests(sandbox, started) if r.host.startswith("localhost")], (
            "the viewer followed a next link to another origin"
        )


def test_progress_shows_each_organisation_while_loading(http, sandbox, viewer):
    set_fault(http, sandbox, "council", latency_ms=2000)  # beyond the first screen, even with one round trip
    first = open_record(http, sandbox)
    assert "Waiting for:</strong> Northgate City Council Social Care" in first.text
    assert 'hx-get="/r/' in first.text and 'hx-trigger="every 1s"' in first.text
    assert "Riverside Medical Practice</span> (Y01001):\n          <strong>loaded</strong>" in first.text
    # Nothing clinical before the access decision, which needs every organisation's answer.
    assert "Allergy to penicillin" not in first.text
    page, _ = wait_complete(http, first.url)
    assert "Waiting for" not in page, re.findall(r'<div class="banner[^>]*>.*?</div>', page, re.S)
    assert "Allergy to penicillin" in page and "Adult social care" in page


# ---- pages, filters, export, headers ---------------------------------------------------------------------


def test_long_lists_load_in_pages(http, sandbox, viewer):
    store = sandbox.state.dataset.stores["gp"]
    if len(store.search("Observation", {"patient": ["gp-pat-price"]})[0]) < 250:
        for i in range(250):  # a long peak-flow diary, so the list spans pages with or without Synthea data
            store.add(
                {
                    "resourceType": "Observation",
                    "id": f"gp-obs-price-peakflow-{i}",
                    "status": "final",
                    "code": {
                        "coding": [
                            {"system": "http://snomed.info/sct", "code": "29893006", "display": "Peak flow rate"}
                        ]
                    },
                    "subject": {"reference": "Patient/gp-pat-price"},
                    "effectiveDateTime": f"2025-{1 + i // 28:02d}-{1 + i % 28:02d}T08:00:00Z",
                    "valueQuantity": {"value": 300 + i % 50, "unit": "L/min"},
                }
            )
    resp = open_record(http, sandbox, nhs="9991003339")
    page = http.get(resp.url + "results").text
    assert page.split('id="table-results"', 1)[1].count('<tr id="row-') == 100  # (reports are a table above)
    more = re.search(r'hx-get="([^"]+)"\s+hx-trigger="revealed"', page)
    assert more, "no lazy-load row"
    fragment = http.get(sandbox.viewer_url + more.group(1).replace("&amp;", "&"), headers={"HX-Request": "true"})
    assert fragment.status_code == 200 and fragment.text.count('<tr id="row-') == 100
    assert "<html" not in fragment.text


def test_encounter_filters(http, sandbox, viewer):
    resp = open_record(http, sandbox)
    everything = http.get(resp.url + "encounters").text
    total = int(re.search(r'id="encounter-count">(\d+)', everything).group(1))
    council = http.get(resp.url + "encounters", params={"org": "council"}).text
    n_council = int(re.search(r'id="encounter-count">(\d+)', council).group(1))
    assert 0 < n_council < total
    assert "Riverside Medical Practice</span>" not in council.split('id="table-encounters"')[1]
    recent = http.get(resp.url + "encounters", params={"from": "2026-01-01", "to": "2026-12-31"}).text
    # Dates as dd-Mmm-yyyy (CUI), one per row.
    shown = re.findall(r'<td data-label="Date" class="nowrap">(\d{2}-[A-Z][a-z]{2}-\d{4})</td>', recent)
    dates = [datetime.strptime(d, "%d-%b-%Y").date().isoformat() for d in shown]
    assert dates and all("2026-01-01" <= d <= "2026-12-31" for d in dates)
    bogus = http.get(resp.url + "encounters", params={"from": "not-a-date", "org": "nowhere"}).text
    assert int(re.search(r'id="encounter-count">(\d+)', bogus).group(1)) == total


def test_results_have_trend_charts_from_several_organisations(http, sandbox, viewer):
    resp = open_record(http, sandbox)
    page = http.get(resp.url + "results").text
    hba1c = re.search(r'<figure class="trend-card" id="trend-hba1c[^"]*">(.*?)</figure>', page, re.S)
    assert hba1c, "no HbA1c trend"
    svg = hba1c.group(1)
    assert svg.count("<circle") + svg.count("<rect") + svg.count("<polygon") >= 14
    assert "Riverside Medical Practice" in svg and "Northgate Hospitals NHS Foundation Trust" in svg
    assert 'role="img"' in svg and "<title" in svg


def test_export_is_a_valid_r4_bundle_with_provenance_per_source(http, sandbox, viewer):
    resp = open_record(http, sandbox)
    export = http.get(resp.url + "export.json")
    assert export.headers["Content-Type"].startswith("application/fhir+json")
    bundle = export.json()
    FHIRElementFactory.instantiate("Bundle", bundle)  # strict R4 4.0.1: raises on anything invalid
    assert bundle["type"] == "collection"
    provenances = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Provenance"]
    assert {p["agent"][0]["who"]["identifier"]["value"] for p in provenances} == {"Y01001", "RX9", "RY8", "L90001"}
    urls = {e["fullUrl"] for e in bundle["entry"]}
    assert len(urls) == len(bundle["entry"])
    for p in provenances:
        assert all(t["reference"] in urls for t in p["target"])
        base = urlsplit(p["target"][0]["reference"]).path.split("/")[2]
        assert all(f"/fhir/{base}/" in t["reference"] for t in p["target"])


def test_record_pages_carry_strict_headers(http, sandbox, viewer):
    resp = open_record(http, sandbox)
    for path in ("", "problems", "results", "encounters", "documents", "care", "export.json"):
        page = http.get(resp.url + path)
        assert page.status_code == 200, path
        csp = page.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe" not in csp
        assert page.headers["Cache-Control"] == "no-store"
        assert page.headers["X-Content-Type-Options"] == "nosniff"
        assert page.headers["Referrer-Policy"] == "no-referrer"
    assert format_nhs_number(MARGARET) in resp.text


def test_documents_are_grouped_by_organisation_and_sanitised(http, sandbox, viewer):
    store = sandbox.state.dataset.stores["hospital"]
    import base64

    hostile = base64.b64encode(
        b'<p>Dear Dr Patel,</p><script>window.pwned=1</script><img src=x onerror="window.pwned=2">'
        b'<a href="javascript:alert(1)">click</a><p>Yours sincerely</p>'
    ).decode()
    store.add(
        {
            "resourceType": "DocumentReference",
            "id": "hospital-doc-hostile",
            "status": "current",
            "type": {"text": "Clinic letter (test)"},
            "subject": {"reference": "Patient/hospital-pat-thompson"},
            "date": "2026-11-01T10:00:00Z",
            "content": [{"attachment": {"contentType": "text/html", "data": hostile}}],
        }
    )
    resp = open_record(http, sandbox)
    listing = http.get(resp.url + "documents").text
    assert "<h3>Northgate Hospitals NHS Foundation Trust</h3>" in listing
    link = re.search(r'href="([^"]+)">Clinic letter \(test\)</a>', listing).group(1)
    letter = http.get(sandbox.viewer_url + link).text
    body = letter.split('id="document-body">')[1].split("</article>")[0]
    assert "Dear Dr Patel" in body and "Yours sincerely" in body
    assert "<script" not in body and "onerror" not in body and "javascript:" not in body


def test_the_record_is_gathered_while_the_browser_follows_the_sign_in_redirect(http, sandbox, viewer):
    started = time.time()
    to_viewer = http.get(
        f"{sandbox.sandbox_url}/ehr/launch", params={"user": "dr-patel", "patient": DAVID}, allow_redirects=False
    )
    to_authorize = http.get(to_viewer.headers["Location"], allow_redirects=False)
    to_callback = http.get(to_authorize.headers["Location"], allow_redirects=False)
    to_record = http.get(to_callback.headers["Location"], allow_redirects=False)  # the callback itself
    assert to_record.status_code == 302
    deadline = time.time() + 5
    searched = []
    while time.time() < deadline and not searched:
        searched = [
            r for r in viewer_requests(sandbox, started) if r.org_id == "hospital" and "/Patient?identifier=" in r.url
        ]
        time.sleep(0.05)
    assert searched, "no organisation was asked before the record page was requested"
    page = http.get(sandbox.viewer_url + to_record.headers["Location"])
    assert page.status_code == 200 and "Check this is the right person:" in page.text
    again = [r for r in viewer_requests(sandbox, started) if r.org_id == "hospital" and "/Patient?identifier=" in r.url]
    assert len(again) == 1, "the record page fetched again instead of using the early start"


def test_shortened_lists_say_so_and_show_everything_on_request(http, sandbox, viewer):
    """Reports beyond the first 50 are never dropped silently: "Showing 50 of N" and a link to all N."""
    store = sandbox.state.dataset.stores["gp"]
    existing = len(store.search("DiagnosticReport", {"patient": ["gp-pat-price"]})[0])
    for i in range(max(0, 60 - existing)):
        store.add(
            {
                "resourceType": "DiagnosticReport",
                "id": f"gp-dr-price-spirometry-{i}",
                "status": "final",
                "code": {
                    "coding": [{"system": "http://snomed.info/sct", "code": "127783003", "display": "Spirometry"}]
                },
                "subject": {"reference": "Patient/gp-pat-price"},
                "effectiveDateTime": f"2024-{1 + i // 28:02d}-{1 + i % 28:02d}T09:00:00Z",
                "conclusion": f"Spirometry {i}",
            }
        )
    resp = open_record(http, sandbox, nhs="9991003339")
    page = http.get(resp.url + "results").text
    reports = page.split('id="table-reports"')[1].split("</table>")[0]
    total = int(re.search(r'id="count-reports">Showing 50 of (\d+) reports', page).group(1))
    assert total >= 60 and reports.count('<tr id="row-') == 50
    link = re.search(r'id="count-reports">[^<]*<a href="([^"]+)"', page).group(1).replace("&amp;", "&")
    everything = http.get(sandbox.viewer_url + link).text
    assert everything.split('id="table-reports"')[1].split("</table>")[0].count('<tr id="row-') == total
    assert 'id="count-reports"' not in everything


def test_excerpt_counts_what_it_leaves_out():
    from app.record.sections import excerpt

    short = excerpt(list(range(30)), 12, "trends")
    assert short.items == list(range(12)) and short.total == 30 and short.cut
    whole = excerpt(list(range(30)), 12, "trends", everything=True)
    assert len(whole.items) == 30 and not whole.cut
    assert not excerpt([1, 2], 12, "trends").cut


def test_the_record_is_merged_once_per_page(http, sandbox, viewer, monkeypatch):
    """Facts for the decision come from the raw resources, so a page merges the record once (with the
    withholding applied), not once for the decision and again for the page."""
    from app.record.catalogue import Catalogue

    calls = []
    original = Catalogue.build
    monkeypatch.setattr(Catalogue, "build", lambda self, items: calls.append(1) or original(self, items))
    resp = open_record(http, sandbox, nhs="9991003339")
    text = wait_complete(http, resp.url)[0] if "Gathering the record" in resp.text else resp.text
    assert "Allergies and adverse reactions" in text  # the loading page and the polls merge nothing
    assert len(calls) == 1
    http.get(resp.url + "medications")  # another page of the same launch: the merge is reused
    assert len(calls) == 1
