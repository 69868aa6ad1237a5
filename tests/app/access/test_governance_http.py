"""Information governance over real HTTP: every sandbox user against the patients that matter to them."""

from __future__ import annotations

import csv
import io
import re
import time

import pytest
from fhirclient.models.fhirelementfactory import FHIRElementFactory

from app.audit.store import AuditStore
from app.record.catalogue import CATALOGUE
from app.services import services
from tests.conftest import LoopbackCookieJar
from tests.html_forms import form_with

MARGARET, OLIVER, PRIYA, JACK, HUW, EDNA, SOPHIE = (
    "9991000372",
    "9991000747",
    "9991001115",
    "9991001484",
    "9991001859",
    "9991002227",
    "9991002960",
)


@pytest.fixture
def gov(sandbox):
    app = sandbox.viewer_app
    yield app
    app.extensions["launch"].discovery.clear()


# Launched from an attendance open now (the sandbox EHR's ``encounter=current``): a verified, current encounter.
IN_AN_OPEN_ATTENDANCE = {("cmhn-ahmed", PRIYA), ("dr-evans", PRIYA)}


def launch(http, sandbox, user, nhs):
    params = {"user": user, "patient": nhs}
    if (user, nhs) in IN_AN_OPEN_ATTENDANCE:
        params["encounter"] = "current"
    return http.get(f"{sandbox.sandbox_url}/ehr/launch", params=params)


def landing(resp) -> str:
    """Classify where a launch ended up."""
    if "/access/reason" in resp.url:
        return "reason"
    if "/access/break-glass" in resp.url:
        return "break-glass" if resp.status_code == 200 else "break-glass-not-allowed"
    if "/privacy/" in resp.url:
        return "privacy-console"
    if resp.status_code == 403 and 'id="refusal-reason"' in resp.text:
        return "refused"
    if resp.status_code == 200 and resp.url.endswith("/care"):
        return "demographics-and-care"
    if resp.status_code == 200 and "Allergies and adverse reactions" in resp.text:
        return "record"
    return f"unexpected {resp.status_code} {resp.url}"


@pytest.mark.parametrize(
    ("user", "nhs", "expected", "why"),
    [
        ("dr-patel", MARGARET, "record", "registered at the user's practice"),
        ("nurse-okafor", MARGARET, "record", "registered at the user's practice"),
        ("nurse-okafor", EDNA, "break-glass-not-allowed", "family (RelatedPerson), no emergency activity"),
        ("reception-hughes", MARGARET, "demographics-and-care", "administrative role"),
        ("dr-evans", MARGARET, "reason", "the launch encounter (a clinic in May) is long finished: not current"),
        ("dr-evans", SOPHIE, "record", "a current encounter (her open A&E attendance) in the launch context"),
        ("dr-evans", EDNA, "reason", "no relationship with the hospital"),
        ("dr-evans", HUW, "break-glass", "colleague: staff at the user's organisation"),
        ("dr-evans", OLIVER, "break-glass", "patient objected to sharing"),
        ("dr-patel", OLIVER, "break-glass", "objection applies to the registered GP too"),
        ("cmhn-ahmed", PRIYA, "record", "in an open attendance, with the sensitive-records activity"),
        ("dr-evans", PRIYA, "record", "in an open attendance, sensitive items withheld"),
        ("sw-campbell", JACK, "record", "open social care episode (summary record only)"),
        ("po-wright", MARGARET, "privacy-console", "privacy officers see audit, not clinical content"),
        ("dr-morgan", HUW, "refused", "the user's own record"),
        ("dr-patel", SOPHIE, "reason", "only the hospital says she is registered at the practice: not a relationship"),
    ],
)
def test_each_user_against_each_relevant_patient(http, sandbox, gov, user, nhs, expected, why):
    store = services(gov).audit_store
    before = store.count()
    resp = launch(http, sandbox, user, nhs)
    assert landing(resp) == expected, f"{why}: {landing(resp)}"
    assert store.count() > before, "no audit event for this access"
    latest = store.search(limit=5)
    assert any(e.event["subtype"][-1]["code"] in ("launch", "access-decision", "refusal", "view") for e in latest)
    assert store.verify().ok


def test_sensitive_items_are_withheld_and_counted_never_named(http, sandbox, gov):
    page = launch(http, sandbox, "dr-evans", PRIYA).text
    assert 'id="withheld-banner"' in page
    count = int(re.search(r'id="withheld-banner"><strong>(\d+) item', page).group(1))
    assert count >= 3
    problems = http.get(page_url(http) + "problems").text
    for secret in ("HIV", "Chlamydia", "Termination", "Depressive"):
        assert secret.lower() not in problems.lower(), secret
    other = new_browser()
    full = launch(other, sandbox, "cmhn-ahmed", PRIYA).text
    assert 'id="withheld-banner"' not in full


def page_url(http) -> str:
    return http.last_url


@pytest.fixture(autouse=True)
def remember_urls(http):
    def hook(r, *args, **kwargs):
        if "/r/" in r.url and r.status_code == 200:
            http.last_url = re.match(r"(.*/r/[^/]+/)", r.url).group(1)

    http.hooks["response"].append(hook)


def new_browser():
    import requests

    s = requests.Session()
    s.cookies = LoopbackCookieJar()
    return s


def form_fields(html: str) -> dict:
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', html))


def test_reason_is_required_recorded_audited_and_alerted(http, sandbox, gov):
    resp = launch(http, sandbox, "dr-evans", EDNA)
    assert "/access/reason" in resp.url and "Edna" in resp.text
    assert "Dementia" not in resp.text  # nothing clinical before the reason
    bad = http.post(resp.url.split("?")[0], data={**form_fields(resp.text), "reason": "CURIOUS"})
    assert bad.status_code == 400
    ok = http.post(
        resp.url.split("?")[0],
        data={**form_fields(resp.text), "reason": "COC", "note": "Arranging follow-up after a fall"},
    )
    assert ok.status_code == 200 and "Allergies and adverse reactions" in ok.text
    events = services(gov).audit_store.search(patient_nhs=EDNA, limit=20)
    reason = next(e for e in events if e.event["subtype"][-1]["code"] == "reason-recorded")
    assert reason.event["purposeOfEvent"][0]["coding"][0]["code"] == "COC"
    assert "Arranging follow-up after a fall" in reason.event["outcomeDesc"]
    views = [e for e in events if e.event["subtype"][-1]["code"] == "view"]
    assert views and views[0].event["agent"][0]["purposeOfUse"][0]["coding"][0]["code"] == "COC"
    alerts = services(gov).alerts.list(patient_nhs=EDNA)
    recipients = {a.recipient for a in alerts if a.kind == "reason"}
    assert {"care-team:Y01001", "care-team:RY8", "privacy-officer"} <= recipients
    # Delivery leaves the request (the alert outbox): the inbox hears of it shortly after.
    deadline = time.monotonic() + 15
    while True:
        inbox = [m for m in sandbox.state.inbox if m["patient_nhs"] == EDNA and m["kind"] == "reason"]
        wanted = {"care-team:Y01001", "privacy-officer"}
        if {m["recipient"] for m in inbox} >= wanted or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert {m["recipient"] for m in inbox} >= {"care-team:Y01001", "privacy-officer"}


def test_break_glass_for_an_objection(http, sandbox, gov):
    resp = launch(http, sandbox, "dr-patel", OLIVER)
    assert "/access/break-glass" in resp.url and "objected to sharing" in resp.text
    url = resp.url.split("?")[0]
    fields = form_fields(resp.text)
    short = http.post(url, data={**fields, "justification": "urgent", "confirm": "yes"})
    assert short.status_code == 400 and "characters or more" in short.text
    unconfirmed = http.post(url, data={**fields, "justification": "Collapsed in surgery, needs medication history"})
    assert unconfirmed.status_code == 400
    ok = http.post(
        url, data={**fields, "justification": "Collapsed in surgery, needs medication history", "confirm": "yes"}
    )
    assert ok.status_code == 200 and 'id="break-glass-banner"' in ok.text
    events = services(gov).audit_store.search(patient_nhs=OLIVER, limit=20)
    bg = next(e for e in events if e.event["subtype"][-1]["code"] == "break-glass")
    assert bg.event["subtype"][0]["code"] == "110127" and bg.event["purposeOfEvent"][0]["coding"][0]["code"] == "ETREAT"
    assert any(
        e.event["subtype"][-1]["code"] == "view"
        and e.event.get("purposeOfEvent", [{}])[0].get("coding", [{}])[0].get("code") == "BTG"
        for e in events
    )
    assert any(
        a.kind == "break-glass" and a.recipient == "privacy-officer"
        for a in services(gov).alerts.list(patient_nhs=OLIVER)
    )
    # The override is for that patient only: another patient shows no break-glass banner.
    other = launch(http, sandbox, "dr-patel", MARGARET)
    assert 'id="break-glass-banner"' not in other.text
    # Time-limited: when the override expires the record is closed again.
    access = services(gov).access
    access.store.delete("break-glass:555000000001:" + OLIVER)
    access.store.delete(next(k for k in list(access.store._data) if k.startswith("decided:") and "permit:BTG" in k))
    again = launch(http, sandbox, "dr-patel", OLIVER)
    assert "/access/break-glass" in again.url


def test_users_without_emergency_access_cannot_break_the_glass(http, sandbox, gov):
    resp = launch(http, sandbox, "nurse-okafor", EDNA)
    assert resp.status_code == 403 and "does not include emergency access" in resp.text
    forced = http.post(
        resp.url.split("?")[0], data={**form_fields(resp.text), "justification": "x" * 40, "confirm": "yes"}
    )
    assert forced.status_code in (400, 403)
    assert "Dementia" not in forced.text
    assert any(a.kind == "family" for a in services(gov).alerts.list(patient_nhs=EDNA))


def test_self_access_is_refused_and_alerted(http, sandbox, gov):
    resp = launch(http, sandbox, "dr-morgan", HUW)
    assert resp.status_code == 403 and "your own record" in resp.text
    assert any(a.kind == "self-access" for a in services(gov).alerts.list(patient_nhs=HUW))


def test_administrative_roles_see_care_team_not_clinical_content(http, sandbox, gov):
    page = launch(http, sandbox, "reception-hughes", MARGARET)
    assert page.url.endswith("/care") and "Horsforth District Nursing Team" in page.text
    assert "diabetes" not in page.text.lower() and "Download as FHIR Bundle" not in page.text
    assert http.get(http.last_url + "export.json").status_code == 403
    assert http.get(http.last_url + "medications").status_code == 403


def test_summary_only_role_cannot_open_detailed_sections(http, sandbox, gov):
    launch(http, sandbox, "sw-campbell", JACK)
    assert http.get(http.last_url + "results").status_code == 403
    assert http.get(http.last_url + "medications").status_code == 200


def test_audit_failure_refuses_access(http, sandbox, gov, tmp_path):
    trail = services(gov).audit
    original = trail.store
    trail.store = AuditStore("sqlite:////proc/no-such-place/audit.sqlite3")
    try:
        resp = launch(http, sandbox, "dr-patel", MARGARET)
    finally:
        trail.store = original
    assert resp.status_code == 503
    assert "cannot be written" in resp.text
    assert "Allergy to penicillin" not in resp.text


# ---- privacy officer ------------------------------------------------------------------------------------------


def privacy_console(sandbox):
    officer = new_browser()
    resp = launch(officer, sandbox, "po-wright", MARGARET)
    assert "/privacy/alerts" in resp.url
    return officer, resp.url.split("/privacy/")[0] + "/privacy/"


def test_privacy_officer_alerts_and_subject_access_report(http, sandbox, gov):
    resp = launch(http, sandbox, "dr-evans", EDNA)
    http.post(resp.url.split("?")[0], data={**form_fields(resp.text), "reason": "ETREAT"})
    officer, base = privacy_console(sandbox)
    alerts = officer.get(base + "alerts").text
    assert "self-declared reason" in alerts and "Dr Rhys Evans" in alerts
    alert_id = re.search(r"/privacy/alerts/(\d+)/acknowledge", alerts).group(1)
    ack = officer.post(f"{base}alerts/{alert_id}/acknowledge", data={"csrf": form_fields(alerts)["csrf"]})
    assert ack.status_code == 200 and f"/alerts/{alert_id}/acknowledge" not in ack.text

    report = officer.get(base + "subject-access", params={"nhs": EDNA}).text
    assert "Dr Rhys Evans" in report and "ETREAT Emergency treatment" in report and "Northgate Hospitals" in report
    events = report.split('id="events"', 1)[1].split("</table>", 1)[0]
    assert "R8000 Clinical Practitioner Access Role" in events and "Reason for access recorded" in events
    assert "/r/" not in events, "the report shows the viewer's internal addresses"
    rows = list(
        csv.DictReader(io.StringIO(officer.get(base + "subject-access", params={"nhs": EDNA, "format": "csv"}).text))
    )
    assert any(r["who"] == "Dr Rhys Evans" and r["why"] == "ETREAT Emergency treatment" for r in rows)
    bundle = officer.get(base + "subject-access", params={"nhs": EDNA, "format": "fhir"}).json()
    FHIRElementFactory.instantiate("Bundle", bundle)
    assert all(e["resource"]["resourceType"] == "AuditEvent" for e in bundle["entry"]) and bundle["entry"]
    search = officer.get(base + "audit", params={"purpose": "ETREAT", "org": "RX9"}).text
    assert "Dr Rhys Evans" in search
    assert officer.get(base + "subject-access", params={"nhs": "1234567890"}).status_code == 400


def test_privacy_pages_are_for_privacy_officers_only(http, sandbox, gov):
    launch(http, sandbox, "dr-patel", MARGARET)
    assert http.get(http.last_url + "privacy/alerts").status_code == 403


def test_standalone_users_need_training(sandbox, gov):
    browser = new_browser()
    start = browser.get(f"{sandbox.viewer_url}/start", params={"iss": sandbox.fhir_base("gp")})
    landed = form_with(start, "decision").submit(browser, ("decision", "allow"), user="dr-patel", patient=MARGARET)
    assert landed.status_code == 403 and "training" in landed.text
    officer, base = privacy_console(sandbox)
    page = officer.get(base + "training").text
    officer.post(
        base + "training",
        data={"csrf": form_fields(page)["csrf"], "sds_user_id": "555000000001", "completed": "2026-11-20"},
    )
    retry = new_browser()
    start = retry.get(f"{sandbox.viewer_url}/start", params={"iss": sandbox.fhir_base("gp")})
    landed = form_with(start, "decision").submit(retry, ("decision", "allow"), user="dr-patel", patient=MARGARET)
    assert "Allergies and adverse reactions" in landed.text


def test_audit_verify_command(gov):
    runner = gov.test_cli_runner()
    result = runner.invoke(args=["audit", "verify"])
    assert result.exit_code == 0 and "intact" in result.output


def test_200_concurrent_accesses_make_200_chained_audit_events(http, sandbox, gov):
    from concurrent.futures import ThreadPoolExecutor

    launch(http, sandbox, "dr-patel", MARGARET)
    url = http.last_url + "allergies"
    store = services(gov).audit_store
    before = store.count()
    cookies = http.cookies

    def view(_):
        browser = new_browser()
        browser.cookies.update(cookies)
        return browser.get(url).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(view, range(200)))
    assert statuses == [200] * 200
    assert store.count() - before == 200
    events = store.search(limit=200)
    assert sorted(e.seq for e in events) == list(range(before + 1, before + 201))  # no gap
    assert len({e.prev_hash for e in events}) == 200  # no fork
    assert all(e.event["subtype"][-1]["code"] == "view" for e in events)
    assert store.verify().ok


def test_export_leaves_out_what_was_withheld(http, sandbox, gov):
    launch(http, sandbox, "dr-evans", PRIYA)
    restricted = http.get(http.last_url + "export.json").json()
    other = new_browser()
    landed = launch(other, sandbox, "cmhn-ahmed", PRIYA)
    full = other.get(re.match(r"(.*/r/[^/]+/)", landed.url).group(1) + "export.json").json()

    def labelled(bundle):
        return [
            e["fullUrl"]
            for e in bundle["entry"]
            if any(
                s.get("code") in ("R", "V", "HIV", "STD", "SEX", "PSY")
                for s in (e["resource"].get("meta") or {}).get("security") or []
            )
        ]

    assert labelled(full), "the sensitive-records role should export Priya's sensitive items"
    assert labelled(restricted) == []
    assert len(restricted["entry"]) < len(full["entry"])


def test_refused_on_identity_alone_means_nothing_is_fetched(http, sandbox, gov):
    """A privacy officer (no clinical capability) lands on their console and no organisation is asked
    anything about the patient: not the search by NHS number, not a single clinical resource."""
    started = time.time()
    resp = launch(http, sandbox, "po-wright", MARGARET)
    assert landing(resp) == "privacy-console"
    http.get(resp.url.split("/privacy/")[0] + "/")  # the record's first page: refused again, still no fetch
    time.sleep(0.5)  # an early start, had there been one, would have sent its requests by now
    asked = [r.url for r in list(sandbox.state.requests) if r.at >= started]
    patient_searches = [u for u in asked if "/Patient?" in u]
    clinical = [u for u in asked if any(f"/{t}?" in u for t in CATALOGUE.fetch_types)]
    assert patient_searches == [] and clinical == [], asked
    # The same launch by a clinician does ask every organisation (so the check above could fail).
    started = time.time()
    launch(http, sandbox, "dr-patel", MARGARET)
    assert any("/Observation?" in r.url for r in list(sandbox.state.requests) if r.at >= started)
