"""Issue 12, items 2 and 6, over real HTTP through the sandbox: verified relationships, and nothing said to
those refused (who holds a record, refresh limits, alerts addressed elsewhere, justifications in words)."""

from __future__ import annotations

import json
import re
import time

import pytest

from app.audit.alerts import Alert
from app.audit.events import now
from app.services import services
from tests.conftest import LoopbackCookieJar

MARGARET, HUW, EDNA, SOPHIE, ARTHUR = "9991000372", "9991001859", "9991002227", "9991002960", "9991003339"
NAMES = (
    "Riverside Medical Practice",
    "Northgate Community and Mental Health NHS Trust",
    "Northgate City Council Social Care",
)


@pytest.fixture
def gov(sandbox):
    app = sandbox.viewer_app
    yield app
    app.extensions["launch"].discovery.clear()


def browser():
    import requests

    s = requests.Session()
    s.cookies = LoopbackCookieJar()
    return s


def launch(http, sandbox, user, nhs, **params):
    return http.get(f"{sandbox.sandbox_url}/ehr/launch", params={"user": user, "patient": nhs, **params}, timeout=30)


def landing(resp) -> str:
    if "/access/reason" in resp.url:
        return "reason"
    if "/access/break-glass" in resp.url:
        return "break-glass"
    if resp.status_code == 200 and "Allergies and adverse reactions" in resp.text:
        return "record"
    return f"unexpected {resp.status_code} {resp.url}"


def base_of(url: str) -> str:
    return re.match(r"(.*/r/[^/]+/)", url).group(1)


def form_fields(html: str) -> dict:
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', html))


def set_fault(http, sandbox, org, **faults):
    http.post(f"{sandbox.sandbox_url}/admin/faults/{org}", json=faults, timeout=10).raise_for_status()


def until_complete(http, base: str, headers: dict | None = None, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = http.get(base + "progress", headers={"HX-Request": "true", **(headers or {})}, timeout=10)
        if resp.headers.get("HX-Refresh") == "true" or resp.headers.get("HX-Redirect"):
            return resp
        time.sleep(0.2)
    raise AssertionError("the record never completed")


# ---- item 2: the launch encounter is verified at the launching EHR --------------------------------------------


@pytest.mark.parametrize(
    ("encounter", "expected", "why"),
    [
        ("no-such-encounter", "reason", "the encounter does not exist at the launching EHR"),
        ("hospital-enc-turner-ed-2026", "reason", "another patient's (current) encounter"),
        ("hospital-enc-price-resp-2025", "reason", "this patient's encounter, finished long ago"),
        ("current", "record", "an attendance of this patient open now"),
    ],
)
def test_a_launch_encounter_counts_only_when_it_exists_is_this_patients_and_is_current(
    http, sandbox, gov, encounter, expected, why
):
    started = time.time()
    resp = launch(http, sandbox, "dr-evans", ARTHUR, encounter=encounter)
    assert landing(resp) == expected, why
    wanted = "hospital-enc-current-hospital-pat-price" if encounter == "current" else encounter
    asked = [r.url for r in list(sandbox.state.requests) if r.at >= started and "/Encounter/" in r.url]
    assert any(u.endswith(f"/fhir/hospital/Encounter/{wanted}") for u in asked), asked  # read at the EHR


def test_the_current_encounter_of_this_patient_shows_the_record(http, sandbox, gov):
    """Sophie's A&E attendance is still open: the hospital's toolbar launch carries it."""
    assert landing(launch(http, sandbox, "dr-evans", SOPHIE)) == "record"


def test_a_hostile_sources_patient_naming_the_users_practice_is_not_registration(http, sandbox, gov):
    """Only the hospital's Patient names Riverside (Y01001) as Sophie's GP: the practice's users get the reason
    prompt, while the practice's own record of Margaret (naming itself) still makes her registered there."""
    assert landing(launch(http, sandbox, "dr-patel", SOPHIE)) == "reason"
    assert landing(launch(browser(), sandbox, "dr-patel", MARGARET)) == "record"


# ---- item 6: who holds a record is said only to those who may learn it ----------------------------------------


def test_a_refused_user_sees_a_neutral_checking_page_and_progress(http, sandbox, gov):
    set_fault(http, sandbox, "council", latency_ms=2500)  # beyond the first screen's wait
    first = launch(http, sandbox, "dr-morgan", HUW)  # his own record: he will be refused
    assert first.status_code == 200 and 'id="checking"' in first.text, first.url
    for name in NAMES:
        assert name not in first.text, name
    assert "Organisations checked" not in first.text and "Waiting for" not in first.text
    poll = http.get(base_of(first.url) + "progress", headers={"HX-Request": "true"}, timeout=10)
    assert poll.status_code == 200
    if poll.headers.get("HX-Refresh") != "true":
        assert 'id="checking"' in poll.text and 'hx-get="' in poll.text
    for name in NAMES:
        assert name not in poll.text, name
    until_complete(http, base_of(first.url))
    final = http.get(first.url, timeout=30)
    assert final.status_code == 403 and "your own record" in final.text
    for name in NAMES:
        assert name not in final.text, name


def test_a_user_who_will_be_asked_a_reason_sees_who_is_being_asked(http, sandbox, gov):
    set_fault(http, sandbox, "council", latency_ms=2500)
    first = launch(http, sandbox, "dr-evans", EDNA)
    assert "Waiting for:</strong> Northgate City Council Social Care" in first.text
    assert 'id="checking"' not in first.text
    poll = http.get(base_of(first.url) + "progress", headers={"HX-Request": "true"}, timeout=10)
    assert "Northgate City Council Social Care" in poll.text


def test_refresh_is_rate_limited_per_launch_and_every_refresh_is_audited(http, sandbox, gov):
    store = services(gov).audit_store
    page = launch(http, sandbox, "dr-patel", MARGARET)
    base = base_of(page.url)
    started = time.time()
    refreshed = http.get(base + "?refresh=1", timeout=30)
    assert refreshed.status_code == 200 and 'id="refresh-limited"' not in refreshed.text
    assert any("/Observation?" in r.url for r in list(sandbox.state.requests) if r.at >= started)
    # The loading page's poll sends the browser back to the page without asking for another refresh.
    done = until_complete(http, base, headers={"HX-Current-URL": base + "?refresh=1"})
    assert done.headers.get("HX-Redirect") == re.sub(r"^https?://[^/]+", "", base)
    again_at = time.time()
    again = http.get(base + "?refresh=1", timeout=30)
    assert again.status_code == 200 and 'id="refresh-limited"' in again.text
    assert "Allergy to penicillin" in again.text  # the record already fetched is served
    time.sleep(0.3)
    assert not [  # this patient's (another test's launch of another patient may still be finishing)
        r.url
        for r in list(sandbox.state.requests)
        if r.at >= again_at and "/Observation?" in r.url and r.nhs_number in (MARGARET, None)
    ]
    events = [json.dumps(e.event) for e in store.search(patient_nhs=MARGARET, limit=30)]
    assert any("rate-limited" in e for e in events) and any("record fetched again" in e for e in events)
    # Per launch context: another launch may refresh at once.
    other = browser()
    second = launch(other, sandbox, "dr-patel", MARGARET)
    assert 'id="refresh-limited"' not in other.get(base_of(second.url) + "?refresh=1", timeout=30).text


# ---- item 6: alerts addressed to privacy officers only --------------------------------------------------------


def alert(recipient: str) -> Alert:
    return Alert(None, now(), "reason", recipient, EDNA, "Dr Test", "Test (RX9)", "Dr Test looked.")


def test_a_privacy_officer_acknowledges_only_existing_alerts_addressed_to_privacy_officers(http, sandbox, gov):
    box = services(gov).alerts
    care_team = box.raise_alert(alert("care-team:RX9"))
    officers = box.raise_alert(alert("privacy-officer"))
    resp = launch(http, sandbox, "po-wright", MARGARET)
    assert "/privacy/alerts" in resp.url
    base = resp.url.split("/privacy/")[0] + "/privacy/"
    csrf = form_fields(resp.text)["csrf"]
    unknown = http.post(f"{base}alerts/987654321/acknowledge", data={"csrf": csrf}, allow_redirects=False)
    assert unknown.status_code == 404
    elsewhere = http.post(f"{base}alerts/{care_team.id}/acknowledge", data={"csrf": csrf}, allow_redirects=False)
    assert elsewhere.status_code == 403
    assert any(a.id == care_team.id for a in box.list("care-team:RX9"))  # still unacknowledged
    ok = http.post(f"{base}alerts/{officers.id}/acknowledge", data={"csrf": csrf}, allow_redirects=False)
    assert ok.status_code == 302
    assert not any(a.id == officers.id for a in box.list("privacy-officer"))


# ---- item 6: a break-glass justification is words ------------------------------------------------------------


@pytest.mark.parametrize("text", ["a" * 40, "asdf asdf asdf asdf asdf asdf", "emergencyemergencyemergencyemergency"])
def test_a_justification_that_is_not_words_is_refused_with_the_message_at_the_field(http, sandbox, gov, text):
    resp = launch(http, sandbox, "dr-evans", HUW)  # a colleague: break-glass, and he may break the glass
    assert "/access/break-glass" in resp.url and resp.status_code == 200
    url = resp.url.split("?")[0]
    bad = http.post(url, data={**form_fields(resp.text), "justification": text, "confirm": "yes"}, timeout=30)
    assert bad.status_code == 400
    assert 'href="#justification"' in bad.text  # the error summary links to the field
    assert 'id="justification-error"' in bad.text and "justification-error" in re.search(
        r"<textarea[^>]*>", bad.text
    ).group(0)
    assert "in words" in bad.text
    assert 'id="break-glass-banner"' not in bad.text
