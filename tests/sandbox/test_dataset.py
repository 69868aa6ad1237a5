"""The sandbox's data: Synthea split across organisations, NHS numbers, strict R4 validity."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import pytest
from fhirclient.models.fhirelementfactory import FHIRElementFactory

from core.nhs_number import NHS_NUMBER_SYSTEM, is_test_range, is_valid
from sandbox.dataset import (
    HOSPITAL_CLASSES,
    SYNTHEA_SKIPPED_TYPES,
    load_dataset,
    main_provider,
    synthea_files,
    synthea_nhs_number,
    synthea_person_id,
)
from sandbox.store import PATIENT_FIELD
from tests.conftest import SYNTHEA_DIR, synthea_available

needs_synthea = pytest.mark.skipif(not synthea_available(), reason=f"Synthea data not present at {SYNTHEA_DIR}")


@pytest.fixture(scope="module")
def dataset(running):
    """Freshly loaded: the running sandbox's data changes as tests trace patients into organisations."""
    return load_dataset(running.state.settings)


def test_every_served_resource_is_strict_r4(dataset):
    """fhirclient's R4 4.0.1 models reject unknown fields and wrong types: everything served must pass."""
    failures = []
    for org_id, store in dataset.stores.items():
        for rtype in store.types():
            for resource in store.all(rtype):
                try:
                    FHIRElementFactory.instantiate(rtype, resource)
                except Exception as exc:  # noqa: BLE001 - collect every failure, report them together
                    failures.append(f"{org_id} {rtype}/{resource['id']}: {exc}")
    assert not failures, "\n".join(failures[:20])


def test_every_patient_has_one_valid_test_range_nhs_number_everywhere(dataset):
    for person in dataset.patients.values():
        assert is_valid(person.nhs_number) and is_test_range(person.nhs_number), person.nhs_number
        for org_id, pid in person.ids.items():
            patient = dataset.stores[org_id].read("Patient", pid)
            numbers = [i["value"] for i in patient["identifier"] if i["system"] == NHS_NUMBER_SYSTEM]
            assert numbers == [person.nhs_number], (org_id, pid)
    assert len({p.nhs_number for p in dataset.patients.values()}) == len(dataset.patients)


def test_each_organisation_has_its_own_patient_ids(dataset):
    for person in dataset.patients.values():
        assert len(set(person.ids.values())) == len(person.ids), person.name


def test_every_reference_resolves_within_its_organisation(dataset):
    """Relative references point at resources the same server holds (logical references carry no 'reference')."""
    dangling = []

    def walk(node, org_id, where):
        if isinstance(node, dict):
            ref = node.get("reference")
            if isinstance(ref, str) and "/" in ref and not ref.startswith(("http", "#", "urn:")):
                rtype, rid = ref.split("/", 1)
                if dataset.stores[org_id].read(rtype, rid) is None:
                    dangling.append(f"{org_id} {where} -> {ref}")
            for v in node.values():
                walk(v, org_id, where)
        elif isinstance(node, list):
            for v in node:
                walk(v, org_id, where)

    for org_id, store in dataset.stores.items():
        for rtype in store.types():
            for r in store.all(rtype):
                walk(r, org_id, f"{rtype}/{r['id']}")
    assert not dangling, "\n".join(dangling[:20])


def test_uk_cases_are_present(dataset):
    by_name = {p.name.split()[0] + " " + p.name.split()[-1]: p for p in dataset.patients.values() if p.origin == "uk"}
    assert set(by_name["Sophie Turner"].ids) == {"hospital"}  # known to one organisation only
    assert set(by_name["Margaret Thompson"].ids) == {"gp", "hospital", "community", "council"}
    morgan = dataset.staff["dr-morgan"]
    assert morgan.nhs_number == by_name["Huw Morgan"].nhs_number  # staff member who is also a patient
    council = dataset.stores["council"]
    assert council.all("EpisodeOfCare") and council.all("CareTeam")  # social care involvement
    consent = dataset.stores["gp"].search("Consent", {"patient": [by_name["Oliver Bennett"].ids["gp"]]})[0]
    assert consent[0]["provision"]["type"] == "deny"


# ---- the Synthea split -----------------------------------------------------------------------------------


def independent_expectation(path):
    """Recompute, from the raw bundle, which organisation should hold each clinical resource."""
    bundle = json.loads(path.read_text(encoding="utf-8"))
    resources = {e["fullUrl"]: e["resource"] for e in bundle["entry"]}
    encounters = [r for r in resources.values() if r["resourceType"] == "Encounter"]
    ambulatory = Counter(
        e["serviceProvider"]["reference"] for e in encounters if e["class"]["code"] not in HOSPITAL_CLASSES
    )
    usual = sorted(ambulatory, key=lambda ref: (-ambulatory[ref], ref))[0] if ambulatory else None
    placement = {}
    for e in encounters:
        if e["class"]["code"] in HOSPITAL_CLASSES:
            placement[e["id"]] = "hospital"
        elif e["serviceProvider"]["reference"] == usual:
            placement[e["id"]] = "gp"
        else:
            placement[e["id"]] = "community"
    expected = {}
    for r in resources.values():
        rtype = r["resourceType"]
        if rtype not in PATIENT_FIELD or rtype in SYNTHEA_SKIPPED_TYPES:
            continue
        if rtype == "Encounter":
            expected[(rtype, r["id"])] = placement[r["id"]]
            continue
        ref = (r.get("encounter") or {}).get("reference") or next(
            iter((r.get("context") or {}).get("encounter") or []), {}
        ).get("reference")
        expected[(rtype, r["id"])] = placement[resources[ref]["id"]] if ref else "gp"
    patient = next(r for r in resources.values() if r["resourceType"] == "Patient")
    return patient, expected


@needs_synthea
def test_synthea_resources_are_split_exactly_once(dataset):
    for path in synthea_files(SYNTHEA_DIR):
        patient, expected = independent_expectation(path)
        nhs = synthea_nhs_number(synthea_person_id(patient), set())
        person = next(
            p
            for p in dataset.patients.values()
            if p.origin == "synthea" and synthea_id(dataset, p) == synthea_person_id(patient)
        )
        assert person.nhs_number == nhs or is_valid(person.nhs_number)  # == unless a collision moved it on
        actual = {}
        for org_id, pid in person.ids.items():
            for r in dataset.stores[org_id].patient_resources(pid):
                key = (r["resourceType"], r["id"])
                assert key not in actual, f"{key} served by {actual[key]} and {org_id}"
                actual[key] = org_id
        assert actual == expected, path.name
        assert set(person.ids) == {"gp"} | set(expected.values())


def synthea_id(dataset, person) -> str:
    patient = dataset.stores["gp"].read("Patient", person.ids["gp"])
    return next(
        i["value"] for i in patient["identifier"] if i.get("system") == "https://github.com/synthetichealth/synthea"
    )


@needs_synthea
def test_synthea_split_uses_every_clinical_organisation(dataset):
    holders = Counter(org for p in dataset.patients.values() if p.origin == "synthea" for org in p.ids)
    assert holders["gp"] == len([p for p in dataset.patients.values() if p.origin == "synthea"])
    assert holders["hospital"] > 10 and holders["community"] > 5


@needs_synthea
def test_loading_is_deterministic(running):
    settings = running.state.settings
    first = load_dataset(settings)
    second = load_dataset(settings)
    assert {n: p.ids for n, p in first.patients.items()} == {n: p.ids for n, p in second.patients.items()}


def test_without_synthea_the_uk_patients_still_load(running, tmp_path):
    settings = replace(running.state.settings, synthea_dir=tmp_path / "absent")
    data = load_dataset(settings)
    assert data.patients and all(p.origin == "uk" for p in data.patients.values())
    assert len(data.staff) >= 8


def test_main_provider_ignores_hospital_encounters():
    encounters = [
        {"class": {"code": "EMER"}, "serviceProvider": {"reference": "Organization/a"}},
        {"class": {"code": "EMER"}, "serviceProvider": {"reference": "Organization/a"}},
        {"class": {"code": "AMB"}, "serviceProvider": {"reference": "Organization/b"}},
    ]
    assert main_provider(encounters) == "Organization/b"
    assert main_provider([]) is None


def test_synthea_nhs_numbers_avoid_collisions():
    first = synthea_nhs_number("same-id", set())
    second = synthea_nhs_number("same-id", {first})
    assert first != second and is_valid(second)
