"""The simulated host EHR, the scripted launch, standalone sign-in and the launch inspector, over HTTP."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from core.nhs_number import format_nhs_number
from tests.html_forms import form_with
from tests.smart import SandboxClient, query

STAFF_IDS = {
    "dr-patel",
    "nurse-okafor",
    "reception-hughes",
    "dr-evans",
    "cmhn-ahmed",
    "sw-campbell",
    "po-wright",
    "dr-morgan",
}


def csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


@pytest.fixture
def client(sandbox, http) -> SandboxClient:
    return SandboxClient(sandbox, http)


def sign_in(http, sandbox, user: str) -> None:
    page = http.get(f"{sandbox.sandbox_url}/")
    resp = http.post(f"{sandbox.sandbox_url}/ehr/sign-in", data={"csrf": csrf(page.text), "user": user})
    assert resp.status_code == 200


def test_sign_in_page_lists_every_sample_staff_user(http, sandbox):
    page = http.get(f"{sandbox.sandbox_url}/")
    assert page.status_code == 200
    for user in STAFF_IDS:
        assert f'value="{user}"' in page.text
    assert "Privacy Officer" in page.text or "R0001" in page.text


def test_patient_list_shows_names_dates_of_birth_and_nhs_numbers(http, sandbox):
    sign_in(http, sandbox, "dr-patel")
    page = http.get(f"{sandbox.sandbox_url}/").text
    for person in sandbox.state.dataset.patients.values():
        assert person.name in page
        assert person.birth_date in page
        assert format_nhs_number(person.nhs_number) in page
    assert "Signed in: <strong>Dr Anita Patel</strong>" in page


def test_sign_in_needs_the_form_token(http, sandbox):
    resp = http.post(f"{sandbox.sandbox_url}/ehr/sign-in", data={"user": "dr-patel"})
    assert resp.status_code == 400


def test_patient_page_has_the_toolbar_button_embedded_or_new_window(http, sandbox):
    sign_in(http, sandbox, "dr-patel")
    person = next(p for p in sandbox.state.dataset.sorted_patients() if "gp" in p.ids)
    url = f"{sandbox.sandbox_url}/ehr/patient/{person.nhs_number}"
    page = http.get(url).text
    assert ">Shared Care Record</button>" in page
    assert 'target="scr-panel"' in page and 'name="scr-panel"' in page
    http.post(f"{sandbox.sandbox_url}/ehr/preferences", data={"csrf": csrf(page), "open_mode": "window", "back": url})
    page = http.get(url).text
    assert 'target="_blank"' in page and 'name="scr-panel"' not in page


def test_toolbar_launch_redirects_to_the_viewer_with_iss_and_launch(http, sandbox):
    sign_in(http, sandbox, "dr-evans")
    person = next(p for p in sandbox.state.dataset.sorted_patients() if "hospital" in p.ids)
    page = http.get(f"{sandbox.sandbox_url}/ehr/patient/{person.nhs_number}").text
    resp = http.post(
        f"{sandbox.sandbox_url}/ehr/patient/{person.nhs_number}/launch",
        data={"csrf": csrf(page)},
        allow_redirects=False,
    )
    assert resp.status_code == 302
    location = resp.headers["Location"]
    assert location.startswith(f"{sandbox.viewer_url}/launch?")
    q = query(location)
    assert q["iss"] == sandbox.fhir_base("hospital")
    launch = sandbox.state.launch(q["launch"])
    assert (launch.user_id, launch.nhs_number, launch.patient_id) == (
        "dr-evans",
        person.nhs_number,
        person.ids["hospital"],
    )


def test_scripted_launch_reaches_the_viewer_launch_url(http, sandbox):
    person = next(p for p in sandbox.state.dataset.sorted_patients() if "gp" in p.ids)
    resp = http.get(
        f"{sandbox.sandbox_url}/ehr/launch",
        params={"user": "dr-patel", "patient": person.nhs_number, "launch_url": f"{sandbox.viewer_url}/launch"},
        allow_redirects=False,
    )
    assert resp.status_code == 302
    q = query(resp.headers["Location"])
    assert sandbox.config.ehr_for_issuer(q["iss"]) is not None, "iss must be a registered host EHR"
    assert len(q["launch"]) >= 16
    # Following the redirect, the viewer recognises the issuer and completes the SMART launch.
    landed = http.get(resp.headers["Location"])
    assert landed.status_code == 200
    assert landed.url.startswith(f"{sandbox.viewer_url}/r/")
    assert format_nhs_number(person.nhs_number) in landed.text
    # The user now counts as signed in to the sandbox EHR.
    assert "Signed in: <strong>Dr Anita Patel</strong>" in http.get(f"{sandbox.sandbox_url}/").text


def test_scripted_launch_accepts_spaced_nhs_number_and_encounter(http, sandbox):
    person = next(p for p in sandbox.state.dataset.sorted_patients() if "gp" in p.ids)
    resp = http.get(
        f"{sandbox.sandbox_url}/ehr/launch",
        allow_redirects=False,
        params={
            "user": "dr-patel",
            "patient": format_nhs_number(person.nhs_number),
            "encounter": "enc-1",
            "need_patient_banner": "false",
        },
    )
    launch = sandbox.state.launch(query(resp.headers["Location"])["launch"])
    assert launch.encounter_id == "enc-1" and launch.need_patient_banner is False
    assert resp.headers["Location"].startswith(sandbox.state.settings.launch_url)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"user": "nobody", "patient": "9990000018"}, "Unknown user"),
        ({"user": "dr-patel", "patient": "9990000026"}, "Unknown patient"),
        ({"user": "dr-patel", "patient": "9990000018", "launch_url": "https://evil.example/launch"}, "launch_url"),
        ({"user": "dr-patel", "patient": "9990000018", "launch_url": "javascript:alert(1)"}, "launch_url"),
    ],
)
def test_scripted_launch_errors_are_clear(http, sandbox, params, message):
    resp = http.get(f"{sandbox.sandbox_url}/ehr/launch", params=params, allow_redirects=False)
    assert resp.status_code == 400
    assert message in resp.text


def test_opening_a_patient_unknown_to_your_organisation_traces_them(client, sandbox):
    # The council holds few people; any patient it does not know yet will do (other tests trace some).
    person = next(p for p in sandbox.state.dataset.sorted_patients() if "council" not in p.ids)
    resp = client.scripted_launch("sw-campbell", person.nhs_number)
    launch = sandbox.state.launch(query(resp.headers["Location"])["launch"])
    assert launch.iss == sandbox.fhir_base("council")
    registered = sandbox.state.dataset.stores["council"].read("Patient", launch.patient_id)
    assert registered["identifier"][0]["value"] == person.nhs_number
    assert "council" in person.ids
    assert not sandbox.state.dataset.stores["council"].patient_resources(launch.patient_id)  # demographics only


def test_standalone_sign_in_and_patient_choice(client, sandbox, http):
    person = next(p for p in sandbox.state.dataset.sorted_patients() if "hospital" in p.ids)
    result = client.authorize(sandbox.fhir_base("hospital"), None, scope="launch/patient openid fhirUser patient/*.rs")
    assert result.code is None
    page = http.get(result.request_url)
    assert page.status_code == 200 and "Sign in to Northgate Hospitals" in page.text
    form = form_with(page, "decision")
    # Posted to the bare endpoint: the request's parameters travel once, in the body (a browser sends what
    # the form says; an empty action once sent every parameter twice and authlib refused the request).
    assert form.action == f"{sandbox.sandbox_url}/auth/authorize" and form.method == "post"
    resp = form.submit(http, ("decision", "allow"), user="dr-evans", patient=person.nhs_number, allow_redirects=False)
    assert resp.status_code == 302, resp.text
    code = query(resp.headers["Location"])["code"]
    token = client.exchange(code, result.verifier).json()
    assert token["patient"] == person.ids["hospital"]


def test_standalone_deny(client, sandbox, http):
    result = client.authorize(sandbox.fhir_base("gp"), None, scope="launch/patient openid fhirUser patient/*.rs")
    page = http.get(result.request_url)
    resp = form_with(page, "decision").submit(http, ("decision", "deny"), user="dr-patel", allow_redirects=False)
    assert query(resp.headers["Location"])["error"] == "access_denied"
    assert query(resp.headers["Location"])["state"] == result.state


def test_standalone_authorization_request_by_post(client, sandbox, http):
    """``authorize-post`` is advertised: the request itself may arrive as a POST, which shows the sign-in page."""
    person = next(p for p in sandbox.state.dataset.sorted_patients() if "gp" in p.ids)
    result = client.authorize(sandbox.fhir_base("gp"), None, scope="launch/patient openid fhirUser patient/*.rs")
    page = http.post(f"{sandbox.sandbox_url}/auth/authorize", data=query(result.request_url))
    assert page.status_code == 200 and "Sign in to Riverside Medical Practice" in page.text
    form = form_with(page, "decision")
    assert sorted(n for n, _ in form.controls if n not in ("csrf", "user", "patient")) == sorted(
        query(result.request_url)
    )
    resp = form.submit(http, ("decision", "allow"), user="dr-patel", patient=person.nhs_number, allow_redirects=False)
    token = client.exchange(query(resp.headers["Location"])["code"], result.verifier).json()
    assert token["patient"] == person.ids["gp"]


# ---- inspector --------------------------------------------------------------------------------------------


def test_inspector_shows_launch_context_tokens_and_requests(client, sandbox, http):
    person = next(p for p in sandbox.state.dataset.sorted_patients() if "gp" in p.ids)
    result = client.ehr_launch("dr-patel", person.nhs_number)
    token = client.exchange(result.code, result.verifier).json()
    client.http.get(
        f"{sandbox.fhir_base('gp')}/Condition",
        headers={"Authorization": f"Bearer {token['access_token']}", "X-Request-Id": "inspect-me-1"},
    )
    backend = client.backend_token().json()["access_token"]
    client.http.get(
        f"{sandbox.fhir_base('hospital')}/Patient",
        params={"identifier": f"https://fhir.nhs.uk/Id/nhs-number|{person.nhs_number}"},
        headers={"Authorization": f"Bearer {backend}", "X-Request-Id": "inspect-me-2"},
    )

    launch_id = query(result.launch_location)["launch"]
    detail = http.get(f"{sandbox.sandbox_url}/inspector/api/launches/{launch_id}").json()
    assert detail["user"]["id"] == "dr-patel" and detail["patient"]["nhs_number"] == person.nhs_number
    kinds = {t["kind"] for t in detail["tokens"]}
    assert kinds == {"access_token", "id_token"}
    access = next(t for t in detail["tokens"] if t["kind"] == "access_token")
    assert access["claims"]["patient"] == person.ids["gp"] and access["expires_at"] > access["issued_at"]
    ids = {r["request_id"]: r for r in detail["requests"]}
    assert ids["inspect-me-1"]["org_id"] == "gp" and ids["inspect-me-1"]["status"] == 200
    assert ids["inspect-me-2"]["org_id"] == "hospital"  # backend request about the same patient
    page = http.get(f"{sandbox.sandbox_url}/inspector/launch/{launch_id}").text
    assert "inspect-me-1" in page and "id_token" in page and "fhirUser" in page
    listing = http.get(f"{sandbox.sandbox_url}/inspector").text
    assert launch_id in listing


def test_inspector_forms_change_faults_and_switches(http, sandbox):
    page = http.get(f"{sandbox.sandbox_url}/inspector").text
    token = csrf(page)
    http.post(
        f"{sandbox.sandbox_url}/admin/faults/council", data={"csrf": token, "latency_ms": "250", "mode": "error_500"}
    )
    assert http.get(f"{sandbox.sandbox_url}/admin/faults").json()["council"] == {"latency_ms": 250, "mode": "error_500"}
    http.post(f"{sandbox.sandbox_url}/admin/switches", data={"csrf": token, "name": "deny_consent", "on": "1"})
    assert http.get(f"{sandbox.sandbox_url}/admin/switches").json()["deny_consent"] is True
    assert http.post(f"{sandbox.sandbox_url}/admin/faults/gp", data={"mode": "down"}).status_code == 400  # no token


def test_sandbox_pages_carry_security_headers(http, sandbox):
    resp = http.get(f"{sandbox.sandbox_url}/")
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and f"frame-src 'self' {sandbox.viewer_url}" in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert urlsplit(sandbox.viewer_url).netloc in csp
