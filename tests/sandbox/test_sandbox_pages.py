"""The sandbox teaches: what each patient demonstrates and a search, activity names at sign-in, the inspector's fault
switches with confirmations and a reset, and pages that keyboard and screen-reader users can get around."""

from __future__ import annotations

import re
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import pytest
from flask import template_rendered

from core.nhs_number import format_nhs_number
from core.rbac import ACTIVITY_NAMES, ROLE_NAMES
from sandbox.dataset import SandboxPatient
from sandbox.ehr import matches
from sandbox.settings import FAULT_MODE_NOTES, FAULT_MODES
from sandbox.state import SWITCHES
from tests.conftest import ROOT, SYNTHEA_DIR, synthea_available
from tests.smart import SandboxClient, query

needs_synthea = pytest.mark.skipif(not synthea_available(), reason=f"Synthea data not present at {SYNTHEA_DIR}")
CSS_FILES = [
    ROOT / "app" / "static" / "css" / "app.css",
    ROOT / "app" / "static" / "vendor" / "nhsuk-frontend" / "nhsuk-frontend.min.css",
]
HOSPITAL = "Northgate Hospitals NHS Foundation Trust (hospital) FHIR server"


# ---- helpers ------------------------------------------------------------------------------------------------


class Tags(HTMLParser):
    """Every start tag with its attributes, in document order."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def count(self, tag: str) -> int:
        return sum(1 for t, _ in self.tags if t == tag)

    def forms(self) -> list[dict[str, str]]:
        return [a for t, a in self.tags if t == "form"]


def text(html: str) -> str:
    """The words of an HTML fragment, tags dropped and spaces collapsed."""
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def sign_in(http, sandbox, user: str) -> None:
    page = http.get(f"{sandbox.sandbox_url}/")
    resp = http.post(f"{sandbox.sandbox_url}/ehr/sign-in", data={"csrf": csrf(page.text), "user": user})
    assert resp.status_code == 200 and "Signed in:" in resp.text


def listed(html: str) -> dict[str, str]:
    """Patient list rows: name → the row's text (several people may share a name: their rows are joined)."""
    body = re.search(r'<table class="nhsuk-table" id="patient-list">(.*?)</table>', html, re.S)
    rows: dict[str, str] = {}
    for row in re.findall(r"<tr>(.*?)</tr>", body.group(1) if body else "", re.S)[1:]:  # [0]: the header
        name = text(re.search(r"<td>(.*?)</td>", row, re.S).group(1))
        rows[name] = f"{rows.get(name, '')} {text(row)}".strip()
    return rows


def search(http, sandbox, q: str) -> str:
    resp = http.get(f"{sandbox.sandbox_url}/", params={"q": q})
    assert resp.status_code == 200
    return resp.text


def count_line(html: str) -> tuple[int, int]:
    shown, total = re.search(r'id="patient-count">Showing (\d+) of (\d+) patients', html).groups()
    return int(shown), int(total)


def banner(html: str) -> str:
    found = re.search(r'<div class="nhsuk-notification-banner[^"]*"[^>]*id="confirmation">(.*?)\n</div>', html, re.S)
    return text(found.group(1)) if found else ""


def uk(sandbox, name: str) -> SandboxPatient:
    return next(p for p in sandbox.state.dataset.patients.values() if p.origin == "uk" and p.name == name)


@pytest.fixture
def client(sandbox, http) -> SandboxClient:
    return SandboxClient(sandbox, http)


# ---- the patient list: what each patient demonstrates, and search --------------------------------------------

# What the data of each hand-made patient shows (found in it, not written down), from the fixtures README.
FOUND_IN_THE_DATA = {
    "Oliver James Bennett": ["Objection to sharing"],
    "Priya Sharma": ["Sensitive items withheld"],
    "Jack Thomas Wilson": ["Safeguarding flag"],
    "Margaret Ann Thompson": ["Conflicting allergy records", "Trends worth charting"],
    "David Owen Jones": ["Demographics differ between organisations"],
    "Huw Gareth Morgan": ["Also a staff user (Dr Huw Morgan)"],
    "Edna May Clarke": ["Relative of a staff user (Mrs Grace Okafor)"],
    "Sophie Louise Turner": ["Attendance in progress at hospital"],
}


def test_patient_list_says_what_each_uk_patient_demonstrates(http, sandbox):
    sign_in(http, sandbox, "dr-patel")
    page = http.get(f"{sandbox.sandbox_url}/").text
    assert '<th scope="col">Demonstrates</th>' in page
    rows = listed(page)
    for name, items in FOUND_IN_THE_DATA.items():
        for item in items:
            assert item in rows[name], (name, item)
    everything_found = {item for items in FOUND_IN_THE_DATA.values() for item in items}
    for person in sandbox.state.dataset.patients.values():  # and no other UK patient is said to show them
        if person.origin == "uk":
            expected = FOUND_IN_THE_DATA.get(person.name, [])
            assert not [i for i in everything_found if i in rows[person.name] and i not in expected], person.name
    # The hand-written label comes first; the clean baseline has nothing else to show.
    arthur = uk(sandbox, "Arthur Price")
    assert arthur.demonstrates == ["Clean baseline: no flags or labels"]
    assert rows["Arthur Price"].index("Clean baseline") < rows["Arthur Price"].index("UK sample")
    margaret = uk(sandbox, "Margaret Ann Thompson")
    assert margaret.label and margaret.demonstrates[0] == margaret.label
    assert margaret.label in rows["Margaret Ann Thompson"]


@needs_synthea
def test_synthea_patients_demonstrate_what_their_data_shows(http, sandbox):
    dataset = sandbox.state.dataset
    synthea = [p for p in dataset.patients.values() if p.origin == "synthea"]

    def local_patients(person):
        return [dataset.stores[org].read("Patient", pid) for org, pid in person.ids.items()]

    deceased = {p.nhs_number for p in synthea if any(r.get("deceasedDateTime") for r in local_patients(p))}
    assert len(deceased) == 8  # the Synthea README: 8 deceased
    assert {p.nhs_number for p in synthea if "Deceased" in p.demonstrates} == deceased

    def observations(person):
        return sum(
            len(dataset.stores[org].search("Observation", {"patient": [pid]})[0]) for org, pid in person.ids.items()
        )

    biggest = max(synthea, key=observations)
    assert f"Large record ({observations(biggest):,} observations)" in biggest.demonstrates
    smallest = min(synthea, key=observations)
    assert not any(d.startswith("Large record") for d in smallest.demonstrates)
    same_name = [p for p in synthea if p.name == "Bryan Breitenberg"]
    assert len(same_name) == 2 and all("Same name as another patient" in p.demonstrates for p in same_name)

    sign_in(http, sandbox, "dr-evans")
    page = search(http, sandbox, "deceased")
    assert count_line(page) == (8, len(dataset.patients))
    assert sum(row.count("Deceased") for row in listed(page).values()) == 8
    page = search(http, sandbox, "rodriguez")  # accents do not matter
    assert "Mayte Rodríguez" in listed(page)


def test_search_by_name_nhs_number_or_what_a_patient_demonstrates(http, sandbox):
    sign_in(http, sandbox, "dr-patel")
    total = len(sandbox.state.dataset.patients)
    everyone = http.get(f"{sandbox.sandbox_url}/").text
    assert count_line(everyone) == (total, total)
    assert 'role="search"' in everyone and 'name="q"' in everyone
    oliver = uk(sandbox, "Oliver James Bennett")
    spaced = format_nhs_number(oliver.nhs_number)
    assert " " in spaced
    for q in ("bennett", "OLIVER james", spaced, oliver.nhs_number, "objection to sharing"):
        page = search(http, sandbox, q)
        assert list(listed(page)) == ["Oliver James Bennett"], q
        assert count_line(page) == (1, total), q
    page = search(http, sandbox, "sensitive")
    assert list(listed(page)) == ["Priya Sharma"]
    # Every word must match: name and what the patient demonstrates together.
    assert list(listed(search(http, sandbox, "margaret trends"))) == ["Margaret Ann Thompson"]
    assert listed(search(http, sandbox, "arthur trends")) == {}
    page = search(http, sandbox, "  safeguarding  ")
    assert "Jack Thomas Wilson" in listed(page)
    assert 'value="safeguarding"' in page  # the box keeps what was searched


def test_search_that_matches_nobody_says_so(http, sandbox):
    sign_in(http, sandbox, "dr-patel")
    page = search(http, sandbox, "<zebra>")
    assert count_line(page) == (0, len(sandbox.state.dataset.patients))
    assert 'id="patient-list"' not in page
    assert "No patients match “&lt;zebra&gt;”" in page  # escaped, not markup
    assert "<zebra>" not in page
    assert 'href="/">show all patients</a>' in page


def test_matching_rules():
    person = SandboxPatient(
        nhs_number="9991000747", name="Oliver James Bennett", birth_date="1979-09-02", gender="male", origin="uk"
    )
    person.demonstrates = ["Objection to sharing"]
    for q in ("999 100 0747", "999-100-0747", "1000747", "bennett objection", "OBJECTION"):
        assert matches(person, q), q
    for q in ("999 100 0748", "bennett deceased", "olivia", "0747 9991"):
        assert not matches(person, q), q


# ---- the sign-in page names roles and activities --------------------------------------------------------------


def test_sign_in_page_names_each_users_role_and_activities(http, sandbox):
    page = http.get(f"{sandbox.sandbox_url}/").text
    staff = sandbox.state.dataset.staff
    rows = {
        re.search(r'value="([^"]+)" type="submit"', row).group(1): text(row)
        for row in re.findall(r"<tr>(.*?)</tr>", page, re.S)
        if 'name="user"' in row
    }
    assert set(rows) == set(staff)
    for user in staff.values():
        assert user.job_role_code in ROLE_NAMES, f"{user.id}: no name for job role {user.job_role_code}"
        assert f"{user.job_role_code} {ROLE_NAMES[user.job_role_code]}" in rows[user.id]
        for code in user.activities:
            assert code in ACTIVITY_NAMES, f"{user.id}: no name for activity {code}"
            assert f"{code} {ACTIVITY_NAMES[code]}" in rows[user.id]
        assert f"Sign in as {user.display_name}" in rows[user.id]
    assert "R0001 Privacy Officer" in rows["po-wright"]
    assert "B0015 Receive Legal Override and Emergency View Alerts (Privacy Officer)" in rows["po-wright"]
    assert "B0168 Emergency access to view the SCR" in rows["dr-patel"]
    assert "B0168" not in rows["nurse-okafor"]
    assert "name not known" not in page
    inspector = text(http.get(f"{sandbox.sandbox_url}/inspector").text)
    assert "B1611 Access Sensitive (S) Flagged Records" in inspector  # the inspector's user table too


# ---- the inspector: switches first, confirmations, reset ----------------------------------------------------


def test_inspector_fault_switches_come_first(http, sandbox):
    page = http.get(f"{sandbox.sandbox_url}/inspector").text
    positions = [page.index(marker) for marker in ('id="reset-form"', 'id="faults"', 'id="switches"', 'id="smart"')]
    assert max(positions) < page.index('id="recent-launches"') < page.index('id="sandbox-users"')
    reset = next(f for f in Tags(page).forms() if f.get("id") == "reset-form")
    assert reset["action"] == "/admin/reset" and reset["method"] == "post"
    assert ">Reset all faults</button>" in page
    for mode in FAULT_MODES:  # each behaviour explained next to the switches
        assert FAULT_MODE_NOTES[mode][1:] in text(page)


def test_changing_a_fault_confirms_exactly_what_changed(http, sandbox):
    page = http.get(f"{sandbox.sandbox_url}/inspector").text
    assert banner(page) == ""
    token = csrf(page)
    url = f"{sandbox.sandbox_url}/admin/faults/hospital"
    resp = http.post(url, data={"csrf": token, "latency_ms": "0", "mode": "error_500"}, allow_redirects=False)
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/inspector")
    assert sandbox.state.faults["hospital"].mode == "error_500"
    page = http.get(f"{sandbox.sandbox_url}/inspector").text
    assert banner(page) == (
        f"Success {HOSPITAL}: now answers 500 (internal server error) to every request (before: answers normally)."
    )
    assert re.search(r'<option value="error_500" selected>', page)
    assert banner(http.get(f"{sandbox.sandbox_url}/inspector").text) == ""  # said once

    page = http.post(url, data={"csrf": token, "latency_ms": "250", "mode": "error_500"}).text  # redirect followed
    assert banner(page) == f"Success {HOSPITAL}: now adds 250 ms to every response (before: adds no delay)."
    page = http.post(url, data={"csrf": token, "latency_ms": "250", "mode": "error_500"}).text
    assert "nothing changed; it still answers 500 (internal server error) to every request and adds 250 ms" in page
    bad = http.post(url, data={"csrf": token, "latency_ms": "soon", "mode": "ok"})
    assert bad.status_code == 400 and "whole number of milliseconds" in bad.text
    assert sandbox.state.faults["hospital"].latency_ms == 250


def test_switches_and_smart_profiles_confirm_too(http, sandbox):
    token = csrf(http.get(f"{sandbox.sandbox_url}/inspector").text)
    page = http.post(f"{sandbox.sandbox_url}/admin/switches", data={"csrf": token, "name": "deny_consent", "on": "1"})
    assert (
        banner(page.text) == f"Success Simulated authorisation error deny_consent: now on ({SWITCHES['deny_consent']})."
    )
    assert "deny_consent" in sandbox.state.switches
    page = http.post(f"{sandbox.sandbox_url}/admin/smart/gp", data={"csrf": token, "smart_mode": "generic"})
    assert banner(page.text) == "Success Riverside Medical Practice (gp): SMART mode now generic (before: nhs)."
    unknown = http.post(f"{sandbox.sandbox_url}/admin/switches", data={"csrf": token, "name": "melt_down", "on": "1"})
    assert unknown.status_code == 400


def test_reset_all_faults_says_what_it_put_back(http, sandbox):
    token = csrf(http.get(f"{sandbox.sandbox_url}/inspector").text)
    http.post(f"{sandbox.sandbox_url}/admin/faults/hospital", data={"csrf": token, "latency_ms": "0", "mode": "down"})
    http.post(f"{sandbox.sandbox_url}/admin/switches", data={"csrf": token, "name": "expired_token", "on": "1"})
    http.get(f"{sandbox.sandbox_url}/inspector")  # the confirmations of those changes, read and gone

    assert http.post(f"{sandbox.sandbox_url}/admin/reset", data={"csrf": "forged"}).status_code == 400
    assert sandbox.state.faults["hospital"].mode == "down"  # a forged reset changes nothing

    resp = http.post(f"{sandbox.sandbox_url}/admin/reset", data={"csrf": token}, allow_redirects=False)
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/inspector")
    assert sandbox.state.faults["hospital"].mode == "ok" and not sandbox.state.switches
    page = http.get(f"{sandbox.sandbox_url}/inspector").text
    assert banner(page) == (
        "Success All faults reset to the sandbox configuration. What changed: "
        f"{HOSPITAL}: now answers normally (before: drops every connection, as if the server were down). "
        f"Simulated authorisation error expired_token: now off (it made: {SWITCHES['expired_token']})."
    )
    page = http.post(f"{sandbox.sandbox_url}/admin/reset", data={"csrf": token}).text
    assert banner(page).startswith("Success Nothing to reset")
    # Tools still get JSON from a bare POST, with no form token.
    assert http.post(f"{sandbox.sandbox_url}/admin/reset").json() == {name: False for name in SWITCHES}


# ---- every sandbox page: one <h1>, and every scroll region focusable and named -------------------------------


def scrolling_classes() -> set[str]:
    """Classes that the stylesheets give ``overflow: auto`` or ``scroll`` (the last compound of each selector)."""
    found = set()
    for path in CSS_FILES:
        css = re.sub(r"/\*.*?\*/", "", Path(path).read_text(encoding="utf-8"), flags=re.S)
        for selectors, body in re.findall(r"([^{}]+)\{([^{}]*)\}", css):
            if re.search(r"overflow(-[xy])?\s*:\s*(auto|scroll)", body):
                for selector in selectors.split(","):
                    last = selector.strip().split()[-1] if selector.strip() else ""
                    found.update(re.findall(r"\.([A-Za-z_][\w-]*)", last.split(":")[0]))
    return found


PAGE_TEMPLATES = sorted(
    f"sandbox/{p.name}"
    for p in (ROOT / "sandbox" / "templates" / "sandbox").glob("*.html")
    if not p.name.startswith("_") and p.name != "layout.html"
)


def sandbox_pages(sandbox, http, client) -> dict[str, tuple[int, str]]:
    """Every kind of page the sandbox serves, by name: (status, HTML). Every page template must be among them."""
    rendered: set[str] = set()

    def record(sender, template, context, **extra):
        rendered.add(template.name)

    with template_rendered.connected_to(record, sandbox.sandbox_app):
        pages = _fetch_pages(sandbox, http, client)
    missing = set(PAGE_TEMPLATES) - rendered
    assert not missing, f"pages not checked: add a page rendering {sorted(missing)} to sandbox_pages"
    return pages


def _fetch_pages(sandbox, http, client) -> dict[str, tuple[int, str]]:
    base = sandbox.sandbox_url
    pages = {}

    def get(name, url, **kw):
        resp = http.get(url, **kw)
        pages[name] = (resp.status_code, resp.text)

    get("sign in", f"{base}/")
    person = uk(sandbox, "Arthur Price")
    result = client.ehr_launch("dr-patel", person.nhs_number)  # signs dr-patel in, as the toolbar does
    client.exchange(result.code, result.verifier).raise_for_status()
    launch_id = query(result.launch_location)["launch"]
    get("patient list", f"{base}/")
    get("patient list, searched", f"{base}/", params={"q": "objection"})
    get("patient list, nobody found", f"{base}/", params={"q": "nobody-at-all"})
    get("patient", f"{base}/ehr/patient/{person.nhs_number}")
    get("inbox", f"{base}/ehr/inbox")
    get("no such patient", f"{base}/ehr/patient/9990000000")
    token = csrf(pages["patient"][1])
    http.post(
        f"{base}/admin/faults/gp", data={"csrf": token, "latency_ms": "0", "mode": "paging_loop"}, allow_redirects=False
    )
    get("inspector, with a confirmation", f"{base}/inspector")
    get("inspector", f"{base}/inspector")
    get("launch", f"{base}/inspector/launch/{launch_id}")
    get("no such launch", f"{base}/inspector/launch/nope")
    standalone = client.authorize(sandbox.fhir_base("gp"), None, scope="launch/patient openid fhirUser patient/*.rs")
    get("standalone sign-in", standalone.request_url)
    get("authorisation refused", f"{base}/auth/authorize", params={"client_id": "nobody", "response_type": "code"})
    signed_out = http.post(f"{base}/ehr/sign-out", data={"csrf": token})
    pages["signed out"] = (signed_out.status_code, signed_out.text)
    return pages


EXPECTED_STATUS = {"no such patient": 404, "no such launch": 404, "authorisation refused": 400}


def test_every_sandbox_page_has_exactly_one_h1(client, sandbox, http):
    pages = sandbox_pages(sandbox, http, client)
    assert {"sandbox/patients.html", "sandbox/inspector.html", "sandbox/launch.html"} <= set(PAGE_TEMPLATES)
    for name, (status, html) in pages.items():
        assert status == EXPECTED_STATUS.get(name, 200), name
        assert html.lstrip().lower().startswith("<!doctype html>"), name
        assert Tags(html).count("h1") == 1, name
    assert "confirmation" in pages["inspector, with a confirmation"][1]  # the banner's heading is not an <h1>


def test_every_scroll_region_on_sandbox_pages_is_focusable_and_named(client, sandbox, http):
    scrolling = scrolling_classes()
    assert {"sandbox-scroll", "json", "nhsuk-table-container"} <= scrolling  # the CSS is read as meant
    pages = sandbox_pages(sandbox, http, client)
    seen = set()
    for name, (_, html) in pages.items():
        for tag, attrs in Tags(html).tags:
            classes = set(attrs.get("class", "").split()) & scrolling
            if not classes:
                continue
            seen.update(classes)
            where = f"{name}: <{tag} class={attrs.get('class')!r}>"
            assert attrs.get("tabindex") == "0", f"{where} scrolls but cannot be focused"
            assert attrs.get("aria-label", "").strip() or attrs.get("aria-labelledby"), f"{where} has no name"
            assert attrs.get("role") == "region", f"{where} is not announced as a region"
    assert {"sandbox-scroll", "json"} <= seen  # the wide tables and the token JSON were checked
