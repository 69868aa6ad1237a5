"""The sandbox's chained search on the patient's identifier and its ``_include`` of a role's Practitioner:
what the CapabilityStatement declares, what the searches return, and the organisation that does neither."""

from __future__ import annotations

import pytest

from app.record.match import chained_search_types
from core.nhs_number import NHS_NUMBER_SYSTEM
from sandbox.fhir_server import set_chained_search
from sandbox.store import PATIENT_FIELD
from tests.smart import SandboxClient

MARGARET = "9991000372"  # at gp, hospital, community, council


@pytest.fixture
def client(sandbox, http) -> SandboxClient:
    return SandboxClient(sandbox, http)


@pytest.fixture
def system_token(client) -> str:
    resp = client.backend_token()
    assert resp.status_code == 200, resp.text
    return resp.json()["access_token"]


@pytest.fixture
def unchained(sandbox):
    """The hospital neither declares nor supports the chain, for one test."""
    set_chained_search(sandbox.sandbox_app, "hospital", False)
    yield "hospital"
    set_chained_search(sandbox.sandbox_app, "hospital", True)


def ids(bundle: dict, mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def test_the_capability_statement_declares_the_chain_the_r4_way(client, sandbox):
    statement = client.http.get(f"{sandbox.fhir_base('gp')}/metadata").json()
    (parameter,) = statement["contained"]
    assert parameter["resourceType"] == "SearchParameter" and parameter["code"] == "patient"
    assert parameter["type"] == "reference" and parameter["chain"] == ["identifier"]
    observation = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Observation")
    assert observation["searchParam"] == [{"name": "patient", "type": "reference", "definition": f"#{parameter['id']}"}]
    role = next(r for r in statement["rest"][0]["resource"] if r["type"] == "PractitionerRole")
    assert role["searchInclude"] == ["PractitionerRole:practitioner"]
    # The viewer reads it as: every clinical type is searched by patient.identifier here (held or not).
    assert chained_search_types(statement) == frozenset(PATIENT_FIELD)


def test_a_chained_search_finds_the_same_resources_as_a_search_by_the_patients_id(client, sandbox, system_token):
    person = sandbox.state.dataset.patient(MARGARET)
    for org, pid in person.ids.items():
        for rtype in ("Observation", "Condition", "AllergyIntolerance"):
            by_id = client.fhir(org, rtype, system_token, patient=pid, _count="1000").json()
            chained = client.fhir(
                org, rtype, system_token, **{"patient.identifier": f"{NHS_NUMBER_SYSTEM}|{MARGARET}", "_count": "1000"}
            ).json()
            assert ids(chained) == ids(by_id), (org, rtype)
            assert not [e for e in chained["entry"] if e["search"]["mode"] == "outcome"]  # nothing ignored
    other = client.fhir("gp", "Observation", system_token, **{"patient.identifier": f"{NHS_NUMBER_SYSTEM}|9990000000"})
    assert other.json()["total"] == 0
    assert client.fhir("gp", "Observation", system_token, **{"patient.identifier": "no-system"}).status_code == 400


def test_an_organisation_without_the_chain_neither_declares_nor_honours_it(client, sandbox, system_token, unchained):
    statement = client.http.get(f"{sandbox.fhir_base(unchained)}/metadata").json()
    assert "contained" not in statement and chained_search_types(statement) == frozenset()
    observation = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Observation")
    assert observation["searchParam"] == [{"name": "patient", "type": "reference"}]
    # Ignored as an unknown parameter (and said so), or refused under strict handling — as most servers do.
    search = {"patient.identifier": f"{NHS_NUMBER_SYSTEM}|{MARGARET}", "_count": "5"}
    lenient = client.fhir(unchained, "Observation", system_token, **search).json()
    outcome = [e for e in lenient["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome and "patient.identifier" in outcome[0]["resource"]["issue"][0]["diagnostics"]
    strict = client.http.get(
        f"{sandbox.fhir_base(unchained)}/Observation",
        params=search,
        headers={"Authorization": f"Bearer {system_token}", "Prefer": "handling=strict"},
    )
    assert strict.status_code == 400
    assert chained_search_types(client.http.get(f"{sandbox.fhir_base('gp')}/metadata").json())  # others keep it


def test_include_returns_the_roles_practitioner_once(client, sandbox, system_token):
    bundle = client.fhir(
        "gp",
        "PractitionerRole",
        system_token,
        practitioner="Practitioner/gp-prac-patel",
        _include="PractitionerRole:practitioner",
    ).json()
    assert ids(bundle) == ["gp-role-patel"] and ids(bundle, "include") == ["gp-prac-patel"]
    by_id = client.fhir(
        "gp", "PractitionerRole", system_token, _id="gp-role-patel", _include="PractitionerRole:practitioner"
    ).json()
    assert ids(by_id, "include") == ["gp-prac-patel"]
    without = client.fhir("gp", "PractitionerRole", system_token, practitioner="Practitioner/gp-prac-patel").json()
    assert ids(without, "include") == []
    unknown = client.fhir(
        "gp", "PractitionerRole", system_token, _id="gp-role-patel", _include="PractitionerRole:location"
    ).json()
    assert ids(unknown, "include") == []
    (outcome,) = [e["resource"] for e in unknown["entry"] if e["search"]["mode"] == "outcome"]
    assert "PractitionerRole:location" in outcome["issue"][0]["diagnostics"]  # ignored, and said so


def test_an_included_practitioner_is_served_as_the_generic_mode_serves_it(client, sandbox, system_token):
    sandbox.state.set_smart("gp", smart_mode="generic")
    bundle = client.fhir(
        "gp", "PractitionerRole", system_token, _id="gp-role-patel", _include="PractitionerRole:practitioner"
    ).json()
    (practitioner,) = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "include"]
    read = client.fhir("gp", "Practitioner/gp-prac-patel", system_token).json()
    assert practitioner == read  # no national identifiers, exactly as a read serves it
