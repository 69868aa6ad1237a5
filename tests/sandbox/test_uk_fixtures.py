"""Checks on the UK sandbox fixtures: one FHIR R4 collection Bundle per organisation, staff.json."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
from fhirclient.models.fhirelementfactory import FHIRElementFactory

from core.nhs_number import NHS_NUMBER_SYSTEM, is_valid

FIXTURES = Path(__file__).resolve().parents[2] / "sandbox" / "fixtures" / "uk"
ORGS = {"gp": "Y01001", "hospital": "RX9", "community": "RY8", "council": "L90001"}
ODS_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
HBA1C_IFCC = "999791000000106"
REQUIRED_STAFF = {
    "dr-patel": ("gp", "R8000", {"B0370", "B0360", "B0168", "B1611"}),
    "nurse-okafor": ("gp", "R8001", {"B0370", "B0360"}),
    "reception-hughes": ("gp", "R8009", {"B0264"}),
    "dr-evans": ("hospital", "R8000", {"B0370", "B0360", "B0168"}),
    "cmhn-ahmed": ("community", "R8001", {"B0370", "B0360", "B1611"}),
    "sw-campbell": ("council", "R8003", {"B0370"}),
    "po-wright": ("hospital", "R0001", {"B0015", "B0016"}),
    "dr-morgan": ("hospital", "R8000", {"B0370", "B0360", "B0168"}),
    "dr-haddad": ("gp", "R8000", {"B0360", "B0370"}),  # generic mode (a): RBAC codes on PractitionerRole.code
    "dr-brennan": ("gp", "R8000", {"B0370", "B0360"}),  # generic mode (b): no PractitionerRole
}


def _load(name: str):
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


BUNDLES = {org: _load(f"{org}.json") for org in ORGS}
STAFF = _load("staff.json")


def _resources(org: str) -> list[dict]:
    return [entry["resource"] for entry in BUNDLES[org]["entry"]]


def _all_resources():
    for org in ORGS:
        for res in _resources(org):
            yield org, res


def _patients_by_nhs() -> dict[str, dict[str, dict]]:
    """NHS number -> {org: Patient}."""
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for org, res in _all_resources():
        if res["resourceType"] == "Patient":
            out[_nhs(res)][org] = res
    return out


def _nhs(patient: dict) -> str:
    return next(i["value"] for i in patient["identifier"] if i["system"] == NHS_NUMBER_SYSTEM)


def _patient_named(given: str, family: str) -> dict[str, dict]:
    for by_org in _patients_by_nhs().values():
        if any(p["name"][0]["family"] == family and given in p["name"][0]["given"] for p in by_org.values()):
            return by_org
    raise AssertionError(f"no patient {given} {family}")


def _walk_references(node, path=""):
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            yield path, node["reference"]
        for key, value in node.items():
            yield from _walk_references(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk_references(value, f"{path}[{i}]")


def _subject_id(res: dict) -> str | None:
    for key in ("subject", "patient"):
        ref = res.get(key)
        if isinstance(ref, dict) and ref.get("reference", "").startswith("Patient/"):
            return ref["reference"].split("/", 1)[1]
    return None


def _labels(res: dict) -> set[tuple[str, str]]:
    return {(s["system"], s["code"]) for s in res.get("meta", {}).get("security", [])}


# (a) structure and strict R4 parsing ------------------------------------------------------------------


@pytest.mark.parametrize("org", sorted(ORGS))
def test_bundle_shape_and_own_organisation(org):
    bundle = BUNDLES[org]
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "collection"
    for entry in bundle["entry"]:
        assert set(entry) == {"resource"}
    first = bundle["entry"][0]["resource"]
    assert first["resourceType"] == "Organization"
    assert first["id"] == org
    assert {"system": ODS_SYSTEM, "value": ORGS[org]} in first["identifier"]
    assert first["address"] and first["telecom"]
    ids = [res["id"] for res in _resources(org)]
    assert len(ids) == len(set(ids)), "ids must be unique within a file"
    assert all(i == org or i.startswith(f"{org}-") for i in ids)


@pytest.mark.parametrize("org", sorted(ORGS))
def test_every_resource_parses_with_strict_r4_models(org):
    FHIRElementFactory.instantiate("Bundle", BUNDLES[org])
    for res in _resources(org):
        instance = FHIRElementFactory.instantiate(res["resourceType"], res)
        assert instance.id == res["id"]


def test_every_resource_has_last_updated_in_range():
    for _org, res in _all_resources():
        stamp = res["meta"]["lastUpdated"]
        assert "2024-01-01" <= stamp[:10] <= "2026-12-31", res["id"]
        assert stamp.endswith("Z") and "T" in stamp


# (b) NHS numbers -----------------------------------------------------------------------------------------


def test_nhs_numbers_are_valid_test_range():
    numbers = list(_patients_by_nhs())
    assert len(numbers) == 9
    for number in numbers:
        assert number.startswith("999") and len(number) == 10
        assert is_valid(number), number
    for member in STAFF:
        if member["nhs_number"] is not None:
            assert is_valid(member["nhs_number"]) and member["nhs_number"].startswith("999")


# (c) identity consistency across organisations -----------------------------------------------------------


def test_same_person_has_same_name_everywhere_except_david_jones():
    for number, by_org in _patients_by_nhs().items():
        ids = {p["id"] for p in by_org.values()}
        assert len(ids) == len(by_org), f"{number}: Patient ids must differ per organisation"
        names = {(tuple(p["name"][0]["given"]), p["name"][0]["family"]) for p in by_org.values()}
        births = {p["birthDate"] for p in by_org.values()}
        if any(p["name"][0]["family"] == "Jones" for p in by_org.values()):
            continue
        assert len(names) == 1, f"{number}: {names}"
        assert len(births) == 1, f"{number}: {births}"


def test_david_jones_demographic_mismatch_is_present():
    by_org = _patient_named("David", "Jones")
    assert set(by_org) == {"gp", "hospital"}
    gp, hospital = by_org["gp"], by_org["hospital"]
    assert _nhs(gp) == _nhs(hospital)
    assert gp["birthDate"] == "1970-03-12"
    assert hospital["birthDate"] == "1970-12-03"
    assert hospital["name"][0]["given"][0] == "Dave"
    assert gp["address"][0]["postalCode"] != hospital["address"][0]["postalCode"]


def test_general_practitioner_references():
    for org, res in _all_resources():
        if res["resourceType"] != "Patient":
            continue
        gp_ref = res["generalPractitioner"][0]
        if org == "gp":
            assert gp_ref["reference"] == "Organization/gp"
        else:
            assert gp_ref["identifier"] == {"system": ODS_SYSTEM, "value": "Y01001"}


# (d) references resolve -----------------------------------------------------------------------------------


@pytest.mark.parametrize("org", sorted(ORGS))
def test_relative_references_resolve(org):
    local = {f"{res['resourceType']}/{res['id']}" for res in _resources(org)}
    staff = set()
    for member in STAFF:
        if member["organisation"] == org:
            staff |= {f"Practitioner/{member['practitioner_id']}", f"PractitionerRole/{member['role_id']}"}
    assert not local & staff, "staff practitioners are generated by the loader, not stored in the file"
    for res in _resources(org):
        for path, reference in _walk_references(res):
            assert "://" not in reference and reference.count("/") == 1, f"{res['id']}{path}: {reference}"
            assert reference in local or reference in staff, f"{res['id']}{path}: {reference} is dangling"


@pytest.mark.parametrize("org", sorted(ORGS))
def test_resources_point_at_a_patient_of_the_same_file(org):
    patients = {res["id"] for res in _resources(org) if res["resourceType"] == "Patient"}
    for res in _resources(org):
        subject = _subject_id(res)
        if subject is not None:
            assert subject in patients, res["id"]


# (e) staff -----------------------------------------------------------------------------------------------


def test_required_staff_and_roles():
    by_id = {member["id"]: member for member in STAFF}
    assert len(by_id) == len(STAFF)
    keys = {
        "id",
        "name",
        "organisation",
        "practitioner_id",
        "role_id",
        "sds_user_id",
        "role_profile_id",
        "job_role",
        "job_title",
        "activities",
        "nhs_number",
        "gmc_number",
    }
    # fhir_user_form: practitioner (default) | practitioner_role | relative; role_code_form: job_role (default) |
    # national_rbac; practitioner_role_in_generic: true (default) | false; note: shown to testers.
    optional = {"fhir_user_form", "role_code_form", "practitioner_role_in_generic", "note"}
    for member in STAFF:
        assert keys <= set(member) <= keys | optional, member["id"]
        assert member.get("fhir_user_form", "practitioner") in ("practitioner", "practitioner_role", "relative")
        assert member.get("role_code_form", "job_role") in ("job_role", "national_rbac")
        assert member.get("practitioner_role_in_generic", True) in (True, False)
        assert member["organisation"] in ORGS
        assert member["practitioner_id"].startswith(member["organisation"] + "-")
        assert member["role_id"].startswith(member["organisation"] + "-")
        assert member["sds_user_id"].isdigit() and len(member["sds_user_id"]) == 12
        assert set(member["name"]) == {"prefix", "given", "family"}
    for staff_id, (org, role, activities) in REQUIRED_STAFF.items():
        member = by_id[staff_id]
        assert member["organisation"] == org
        assert member["job_role"]["code"] == role
        assert set(member["activities"]) == activities
        assert (member["gmc_number"] is not None) == staff_id.startswith("dr-")


def test_dr_morgan_is_huw_morgan_the_patient():
    morgan = next(m for m in STAFF if m["id"] == "dr-morgan")
    by_org = _patient_named("Huw", "Morgan")
    assert set(by_org) == {"gp"}
    assert morgan["nhs_number"] == _nhs(by_org["gp"])
    assert all(m["nhs_number"] is None for m in STAFF if m["id"] != "dr-morgan")


# (f) intended special cases ------------------------------------------------------------------------------


def test_oliver_bennett_objection_consent():
    patient_id = _patient_named("Oliver", "Bennett")["gp"]["id"]
    consents = [
        r
        for r in _resources("gp")
        if r["resourceType"] == "Consent" and r["patient"]["reference"] == f"Patient/{patient_id}"
    ]
    assert len(consents) == 1
    consent = consents[0]
    assert consent["status"] == "active"
    assert consent["scope"]["coding"][0]["code"] == "patient-privacy"
    codes = {(c["system"], c["code"]) for cat in consent["category"] for c in cat["coding"]}
    assert ("http://loinc.org", "59284-0") in codes
    assert ("http://snomed.info/sct", "416409005") in codes
    assert consent["provision"]["type"] == "deny"
    assert consent["provision"]["purpose"][0]["code"] == "TREAT"
    assert consent["organization"][0]["reference"] == "Organization/gp"
    assert consent["dateTime"]


@pytest.mark.parametrize("org", ["gp", "council"])
def test_jack_wilson_safeguarding_flag(org):
    patient_id = _patient_named("Jack", "Wilson")[org]["id"]
    flags = [r for r in _resources(org) if r["resourceType"] == "Flag" and _subject_id(r) == patient_id]
    assert flags and all(f["status"] == "active" for f in flags)
    assert flags[0]["category"][0]["coding"][0]["code"] == "safety"
    assert flags[0]["period"]["start"]


def test_priya_sharma_security_labels():
    by_org = _patient_named("Priya", "Sharma")
    assert set(by_org) == {"gp", "hospital", "community"}
    found: set[str] = set()
    unlabelled = 0
    for org, patient in by_org.items():
        for res in _resources(org):
            if _subject_id(res) != patient["id"]:
                continue
            labels = _labels(res)
            if not labels:
                unlabelled += 1
                continue
            confidentiality = {code for system, code in labels if system == CONFIDENTIALITY}
            assert confidentiality & {"R", "V"}, res["id"]
            for sensitivity in ("HIV", "STD", "SEX", "PSY"):
                if (ACT_CODE, sensitivity) in labels:
                    found.add(f"{res['resourceType']}:{sensitivity}")
            if (CONFIDENTIALITY, "V") in labels:
                found.add(f"{res['resourceType']}:V")
    assert {"Condition:HIV", "Condition:STD", "Procedure:SEX", "Condition:PSY", "Observation:V"} <= found
    assert unlabelled >= 3, "the record must also hold ordinary, unlabelled items"


def test_edna_clarke_related_person_is_nurse_okafor():
    okafor = next(m for m in STAFF if m["id"] == "nurse-okafor")
    patient_id = _patient_named("Edna", "Clarke")["gp"]["id"]
    related = [
        r
        for r in _resources("gp")
        if r["resourceType"] == "RelatedPerson" and r["patient"]["reference"] == f"Patient/{patient_id}"
    ]
    assert len(related) == 1
    person = related[0]
    sds_id = {"system": "https://fhir.nhs.uk/Id/sds-user-id", "value": okafor["sds_user_id"]}
    assert sds_id in person["identifier"]
    assert person["relationship"][0]["coding"][0]["code"] == "CHILD"
    assert person["name"][0]["family"] == okafor["name"]["family"]
    assert person["name"][0]["given"] == okafor["name"]["given"]


def test_sophie_turner_known_only_to_hospital():
    by_org = _patient_named("Sophie", "Turner")
    assert set(by_org) == {"hospital"}
    patient_id = by_org["hospital"]["id"]
    mine = [r for r in _resources("hospital") if _subject_id(r) == patient_id]
    kinds = {r["resourceType"] for r in mine}
    assert {"Encounter", "Condition", "DiagnosticReport"} <= kinds
    assert any(r["resourceType"] == "Encounter" and r["class"]["code"] == "EMER" for r in mine)


def test_margaret_thompson_trends_and_conflicts():
    by_org = _patient_named("Margaret", "Thompson")
    assert set(by_org) == set(ORGS)

    def mine(org, rtype):
        patient_id = by_org[org]["id"]
        return [r for r in _resources(org) if r["resourceType"] == rtype and _subject_id(r) == patient_id]

    def with_code(resources, code):
        return [r for r in resources if any(c.get("code") == code for c in r["code"].get("coding", []))]

    assert len(with_code(mine("gp", "Observation"), HBA1C_IFCC)) >= 8
    assert len(with_code(mine("gp", "Observation"), "75367002")) >= 8
    assert len(with_code(mine("gp", "Observation"), "1011481000000105")) >= 6
    assert len(with_code(mine("gp", "Observation"), "27113001")) >= 6
    hospital_obs = mine("hospital", "Observation")
    assert len(with_code(hospital_obs, HBA1C_IFCC) + with_code(hospital_obs, "1011481000000105")) >= 2
    assert with_code(mine("gp", "AllergyIntolerance"), "91936005")
    assert with_code(mine("hospital", "AllergyIntolerance"), "409137002")
    gp_meds = mine("gp", "MedicationRequest") + mine("gp", "MedicationStatement")
    assert len(gp_meds) >= 6 and any(m["status"] == "stopped" for m in gp_meds)
    docs = mine("hospital", "DocumentReference")
    assert docs and docs[0]["content"][0]["attachment"]["contentType"] == "text/html"
    assert mine("community", "CareTeam") and mine("council", "EpisodeOfCare")
    assert all(mine(org, "Encounter") for org in ORGS)
