"""The per-organisation FHIR servers over real HTTP: reads, searches, paging, scopes, faults."""

from __future__ import annotations

import time

import pytest
import requests

from core.nhs_number import NHS_NUMBER_SYSTEM
from tests.smart import SandboxClient


@pytest.fixture
def client(sandbox, http) -> SandboxClient:
    return SandboxClient(sandbox, http)


@pytest.fixture
def system_token(client) -> str:
    resp = client.backend_token()
    assert resp.status_code == 200, resp.text
    return resp.json()["access_token"]


def all_pages(client: SandboxClient, org: str, rtype: str, token: str, **params) -> tuple[list[str], int]:
    """Follow next links to the end; returns every entry id and the number of pages."""
    url = f"{client.running.fhir_base(org)}/{rtype}"
    ids, pages = [], 0
    headers = {"Authorization": f"Bearer {token}"}
    while url:
        resp = client.http.get(url, params=params if pages == 0 else None, headers=headers)
        assert resp.status_code == 200, resp.text
        bundle = resp.json()
        pages += 1
        assert pages < 2000, "paging did not terminate"
        ids += [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
    return ids, pages


def biggest_patient(state, org_id: str, rtype: str = "Observation"):
    store = state.dataset.stores[org_id]
    return max(
        (p for p in state.dataset.patients.values() if org_id in p.ids),
        key=lambda p: len(store.search(rtype, {"patient": [p.ids[org_id]]})[0]),
    )


def test_metadata_is_an_r4_capability_statement_without_auth(client, sandbox):
    resp = client.http.get(f"{sandbox.fhir_base('gp')}/metadata")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/fhir+json")
    body = resp.json()
    assert body["resourceType"] == "CapabilityStatement"
    assert body["fhirVersion"] == "4.0.1"
    oauth = body["rest"][0]["security"]["extension"][0]["extension"]
    assert {e["url"]: e["valueUri"] for e in oauth}["token"] == f"{sandbox.sandbox_url}/auth/token"


def test_data_needs_a_bearer_token(client, sandbox):
    resp = client.http.get(f"{sandbox.fhir_base('gp')}/Patient")
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert resp.json()["resourceType"] == "OperationOutcome"


def test_forged_token_is_refused(client, sandbox):
    assert client.fhir("gp", "Patient", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.").status_code == 401
    assert client.fhir("gp", "Patient", "not-a-jwt").status_code == 401


def test_patient_by_nhs_number_then_read(client, sandbox, system_token):
    for person in sandbox.state.dataset.sorted_patients():
        for org_id, patient_id in person.ids.items():
            bundle = client.fhir(
                org_id, "Patient", system_token, identifier=f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}"
            ).json()
            assert bundle["total"] == 1
            assert bundle["entry"][0]["resource"]["id"] == patient_id
        # An organisation that does not know the patient says so with an empty searchset.
        for org in sandbox.state.settings.organisations:
            if org.id not in person.ids:
                empty = client.fhir(
                    org.id, "Patient", system_token, identifier=f"{NHS_NUMBER_SYSTEM}|{person.nhs_number}"
                ).json()
                assert empty["total"] == 0


def test_read_and_not_found(client, sandbox, system_token):
    person = sandbox.state.dataset.sorted_patients()[0]
    org_id, pid = next(iter(person.ids.items()))
    assert client.fhir(org_id, f"Patient/{pid}", system_token).json()["id"] == pid
    missing = client.fhir(org_id, "Patient/does-not-exist", system_token)
    assert missing.status_code == 404
    assert missing.json()["resourceType"] == "OperationOutcome"
    assert client.fhir(org_id, "Banana", system_token).status_code == 404


@pytest.mark.parametrize("count", [7, 50, 1000])
def test_paging_returns_every_resource_exactly_once(client, sandbox, system_token, count):
    person = biggest_patient(sandbox.state, "gp")
    store = sandbox.state.dataset.stores["gp"]
    expected = [r["id"] for r in store.search("Observation", {"patient": [person.ids["gp"]]})[0]]
    ids, pages = all_pages(client, "gp", "Observation", system_token, patient=person.ids["gp"], _count=count)
    assert pages == max(1, -(-len(expected) // count))
    assert len(ids) == len(set(ids)), "a resource came twice"
    assert ids == expected


def test_paging_one_per_page(client, sandbox, system_token):
    person = biggest_patient(sandbox.state, "gp", "Condition")
    store = sandbox.state.dataset.stores["gp"]
    expected = [r["id"] for r in store.search("Condition", {"patient": [person.ids["gp"]]})[0]]
    assert len(expected) > 3
    ids, pages = all_pages(client, "gp", "Condition", system_token, patient=person.ids["gp"], _count=1)
    assert (ids, pages) == (expected, len(expected))


def test_count_is_capped_and_total_reported(client, sandbox, system_token):
    person = biggest_patient(sandbox.state, "gp")
    bundle = client.fhir("gp", "Observation", system_token, patient=person.ids["gp"], _count=100000).json()
    assert len(bundle["entry"]) <= 1000
    assert bundle["total"] >= len(bundle["entry"])


def test_every_search_type_the_viewer_needs_is_served(client, sandbox, system_token):
    types = [
        "Condition",
        "MedicationRequest",
        "AllergyIntolerance",
        "Encounter",
        "Observation",
        "DiagnosticReport",
        "DocumentReference",
        "Immunization",
        "Procedure",
        "CarePlan",
        "CareTeam",
        "EpisodeOfCare",
        "Flag",
        "Consent",
        "RelatedPerson",
        "MedicationStatement",
    ]
    seen = set()
    for person in sandbox.state.dataset.sorted_patients():
        for org_id, pid in person.ids.items():
            for rtype in types:
                if rtype in seen:
                    continue
                bundle = client.fhir(org_id, rtype, system_token, patient=pid, _count=5).json()
                assert bundle["resourceType"] == "Bundle"
                for e in bundle.get("entry", []):
                    ref = e["resource"].get("subject", e["resource"].get("patient", {})).get("reference")
                    assert ref == f"Patient/{pid}"
                if bundle["total"]:
                    seen.add(rtype)
    assert seen == set(types), f"no sandbox data for {set(types) - seen}"


def test_unknown_parameter_ignored_and_reported_or_strict_400(client, sandbox, system_token):
    person = sandbox.state.dataset.sorted_patients()[0]
    org_id, pid = next(iter(person.ids.items()))
    lax = client.fhir(org_id, "Condition", system_token, patient=pid, flavour="x").json()
    outcomes = [e for e in lax["entry"] if e["search"]["mode"] == "outcome"]
    assert "flavour" in outcomes[0]["resource"]["issue"][0]["diagnostics"]
    strict = client.http.get(
        f"{sandbox.fhir_base(org_id)}/Condition",
        params={"patient": pid, "flavour": "x"},
        headers={"Authorization": f"Bearer {system_token}", "Prefer": "handling=strict"},
    )
    assert strict.status_code == 400


def test_read_only(client, sandbox, system_token):
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        resp = client.http.request(
            method, f"{sandbox.fhir_base('gp')}/Patient", headers={"Authorization": f"Bearer {system_token}"}, json={}
        )
        assert resp.status_code == 405


# ---- scopes ------------------------------------------------------------------------------------------


def test_patient_scope_sees_only_its_patient(client, sandbox):
    people = [p for p in sandbox.state.dataset.sorted_patients() if "gp" in p.ids]
    mine, other = people[0], people[1]
    result = client.ehr_launch("dr-patel", mine.nhs_number)
    token = client.exchange(result.code, result.verifier).json()["access_token"]
    assert client.fhir("gp", f"Patient/{other.ids['gp']}", token).status_code == 403
    assert client.fhir("gp", "Condition", token, patient=other.ids["gp"]).status_code == 403
    listed = client.fhir("gp", "Patient", token).json()
    assert [e["resource"]["id"] for e in listed["entry"]] == [mine.ids["gp"]]
    # A search without a patient parameter is narrowed to the launch patient.
    conditions = client.fhir("gp", "Condition", token).json()
    assert all(e["resource"]["subject"]["reference"] == f"Patient/{mine.ids['gp']}" for e in conditions["entry"])


def test_scope_without_the_type_is_refused(client, sandbox):
    person = next(p for p in sandbox.state.dataset.sorted_patients() if "gp" in p.ids)
    result = client.ehr_launch("dr-patel", person.nhs_number, scope="launch openid fhirUser patient/Condition.rs")
    token = client.exchange(result.code, result.verifier).json()["access_token"]
    assert client.fhir("gp", "Condition", token).status_code == 200
    refused = client.fhir("gp", "Observation", token)
    assert refused.status_code == 403
    assert "insufficient_scope" in refused.headers["WWW-Authenticate"]


def test_v2_read_without_search_permission(client, sandbox):
    person = next(p for p in sandbox.state.dataset.sorted_patients() if "gp" in p.ids)
    result = client.ehr_launch("dr-patel", person.nhs_number, scope="launch openid fhirUser patient/Patient.r")
    token = client.exchange(result.code, result.verifier).json()["access_token"]
    assert client.fhir("gp", f"Patient/{person.ids['gp']}", token).status_code == 200
    assert client.fhir("gp", "Patient", token).status_code == 403


def test_v1_read_scope_is_honoured(client, sandbox):
    person = next(p for p in sandbox.state.dataset.sorted_patients() if "gp" in p.ids)
    result = client.ehr_launch("dr-patel", person.nhs_number, scope="launch openid fhirUser patient/*.read")
    token = client.exchange(result.code, result.verifier).json()["access_token"]
    assert client.fhir("gp", "Condition", token).status_code == 200


# ---- fault injection ------------------------------------------------------------------------------------


def set_fault(client, org: str, **faults) -> None:
    resp = client.http.post(f"{client.running.sandbox_url}/admin/faults/{org}", json=faults)
    assert resp.status_code == 200, resp.text


def test_fault_latency(client, sandbox, system_token):
    set_fault(client, "hospital", latency_ms=300)
    started = time.perf_counter()
    assert client.fhir("hospital", "Patient", system_token, _count=1).status_code == 200
    assert time.perf_counter() - started >= 0.3
    started = time.perf_counter()
    client.fhir("gp", "Patient", system_token, _count=1)
    assert time.perf_counter() - started < 0.3, "latency leaked to another organisation"


def test_fault_down_drops_the_connection(client, sandbox, system_token):
    set_fault(client, "community", mode="down")
    with pytest.raises(requests.ConnectionError):
        client.fhir("community", "Patient", system_token, _count=1)
    assert client.fhir("gp", "Patient", system_token, _count=1).status_code == 200


def test_fault_error_500(client, sandbox, system_token):
    set_fault(client, "council", mode="error_500")
    resp = client.fhir("council", "Patient", system_token)
    assert resp.status_code == 500
    assert resp.json()["resourceType"] == "OperationOutcome"


def test_fault_malformed_json(client, sandbox, system_token):
    set_fault(client, "gp", mode="malformed_json")
    resp = client.fhir("gp", "Patient", system_token)
    assert resp.status_code == 200
    with pytest.raises(ValueError):
        resp.json()


def test_fault_foreign_next_link(client, sandbox, system_token):
    set_fault(client, "gp", mode="foreign_next")
    bundle = client.fhir("gp", "Observation", system_token, _count=2).json()
    next_url = next(link["url"] for link in bundle["link"] if link["relation"] == "next")
    assert requests.utils.urlparse(next_url).hostname == "localhost"
    assert requests.utils.urlparse(sandbox.sandbox_url).hostname == "127.0.0.1"


def test_fault_paging_loop(client, sandbox, system_token):
    set_fault(client, "gp", mode="paging_loop")
    bundle = client.fhir("gp", "Observation", system_token, _count=2).json()
    links = {link["relation"]: link["url"] for link in bundle["link"]}
    assert links["next"] == links["self"]


def test_faults_are_validated(client, sandbox):
    bad = client.http.post(f"{sandbox.sandbox_url}/admin/faults/gp", json={"mode": "on-fire"})
    assert bad.status_code == 400
    assert "mode must be one of" in bad.json()["error"]
    assert client.http.post(f"{sandbox.sandbox_url}/admin/faults/nowhere", json={}).status_code == 404
    assert client.http.post(f"{sandbox.sandbox_url}/admin/faults/gp", json={"latency_ms": -5}).status_code == 400


def test_request_id_is_echoed_and_logged(client, sandbox, system_token):
    resp = client.http.get(
        f"{sandbox.fhir_base('gp')}/Patient",
        params={"_count": 1},
        headers={"Authorization": f"Bearer {system_token}", "X-Request-Id": "req-abc-123"},
    )
    assert resp.headers["X-Request-Id"] == "req-abc-123"
    logged = client.http.get(f"{sandbox.sandbox_url}/inspector/api/requests", params={"org": "gp"}).json()
    row = next(r for r in logged if r["request_id"] == "req-abc-123")
    assert row["method"] == "GET" and row["status"] == 200 and row["client_id"] == "scr-viewer-backend"


def test_faults_can_be_set_in_the_config_file(sandbox, tmp_path):
    from app.config import load_config
    from sandbox import create_sandbox_app
    from sandbox.serve import SANDBOX_CONFIG
    from tests.conftest import test_env

    text = SANDBOX_CONFIG.read_text()
    head, sep, tail = text.rpartition('faults = { latency_ms = 0, mode = "ok" }')  # the last one: council
    (tmp_path / "config.toml").write_text(head + 'faults = { latency_ms = 0, mode = "error_500" }' + tail)
    config = load_config(tmp_path / "config.toml", env=test_env(tmp_path, 1, 2))
    app = create_sandbox_app(config, dataset=sandbox.state.dataset)
    client = app.test_client()
    assert client.get("/fhir/council/metadata").status_code == 500
    assert client.get("/fhir/gp/metadata").status_code == 200
    state = app.extensions["sandbox_state"]
    state.set_faults("council", mode="ok")
    state.reset()  # back to the configured behaviour, not to "ok"
    assert client.get("/fhir/council/metadata").status_code == 500
