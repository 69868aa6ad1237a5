"""Medicines a clinician can trust (issue 11 item 3): current and past apart, a full medicine line, both
MedicationRequest and MedicationStatement, stopped medicines never current, "at time of death"."""

from __future__ import annotations

import re

import pytest

from app.record import medicines, merge
from app.record.merge import Item, SourceRef
from tests.conftest import SYNTHEA_DIR, synthea_available

MARGARET = "9991000372"
SNOMED = "http://snomed.info/sct"


def item(org: str, resource: dict) -> Item:
    ref = f"{resource['resourceType']}/{resource['id']}"
    return Item(resource, SourceRef(org, org.title(), "X1", ref, f"http://{org}.test/fhir/{ref}", None))


def request(id_: str, status: str, authored: str, **extra) -> dict:
    return {
        "resourceType": "MedicationRequest",
        "id": id_,
        "status": status,
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [{"system": SNOMED, "code": "325278007"}],
            "text": "Metformin 500mg tablets",
        },
        "authoredOn": authored,
        **extra,
    }


def test_a_full_medicine_line() -> None:
    r = request(
        "m1",
        "active",
        "2026-10-19",
        courseOfTherapyType={"coding": [{"code": "continuous"}]},
        dosageInstruction=[{"text": "Take TWO tablets twice a day with food"}],
        dispenseRequest={
            "quantity": {"value": 112, "unit": "tablet"},
            "expectedSupplyDuration": {"value": 28, "code": "d"},
        },
        requester={"reference": "PractitionerRole/x", "display": "Dr Anita Patel"},
    )
    assert medicines.dose(r) == "Take TWO tablets twice a day with food"
    assert medicines.quantity(r) == "112 tablets"
    assert medicines.course_type(r) == "Repeat"
    assert medicines.course_length(r) == "28 days"
    assert medicines.prescriber(r) == "Dr Anita Patel"
    assert medicines.status(r) == "Active"
    assert medicines.recorded_as(r) == "Prescribed"


@pytest.mark.parametrize(
    ("extra", "course"),
    [
        ({"courseOfTherapyType": {"coding": [{"code": "acute"}]}}, "Acute"),
        ({"dispenseRequest": {"numberOfRepeatsAllowed": 5}}, "Repeat"),
        ({"dispenseRequest": {"numberOfRepeatsAllowed": 0}}, "Acute"),
        (
            {
                "extension": [
                    {"url": "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-MedicationRepeatInformation"}
                ]
            },
            "Repeat",
        ),
        ({}, ""),  # the source says neither: nothing is guessed
    ],
)
def test_acute_or_repeat(extra: dict, course: str) -> None:
    assert medicines.course_type(request("m", "active", "2026-01-01", **extra)) == course


def test_a_statement_reads_its_own_fields() -> None:
    statement = {
        "resourceType": "MedicationStatement",
        "id": "s1",
        "status": "active",
        "medicationCodeableConcept": {"text": "Paracetamol 500mg tablets"},
        "effectivePeriod": {"start": "2020-05-04"},
        "dosage": [{"doseAndRate": [{"doseQuantity": {"value": 1, "unit": "g"}}]}],
        "informationSource": {"reference": "Organization/o", "display": "Riverside Medical Practice"},
    }
    [row] = merge.medications([item("gp", statement)])
    assert row.status == "current" and row.detail.dose == "1 g" and row.detail.recorded_as == "Recorded as taken"
    assert row.detail.prescriber == ""  # an organisation is not a named prescriber; provenance names it


def test_a_stopped_medicine_never_looks_current() -> None:
    active = request("a", "active", "2014-09-15")
    stopped = request("b", "stopped", "2020-01-10")
    [row] = merge.medications([item("gp", active), item("hospital", stopped)])
    assert row.status == "past" and row.detail.status_text == "Stopped"


def test_a_restart_after_a_stop_is_current() -> None:
    stopped = request("b", "stopped", "2015-01-10")
    restarted = request("a", "active", "2020-09-15")
    rows = merge.medications([item("gp", stopped), item("gp", restarted)])
    assert [r.status for r in rows if "a" in {x["id"] for x in r.resources}] == ["current"]


def test_a_finished_hospital_course_does_not_stop_the_gp_repeat() -> None:
    gp = request("gp-repeat", "active", "2009-05-18")
    hospital = request("inpatient", "completed", "2025-06-20")
    rows = merge.medications([item("gp", gp), item("hospital", hospital)])
    current = [r for r in rows if r.status == "current"]
    assert current and "gp-repeat" in {x["id"] for x in current[0].resources}


def launch(sandbox, http, nhs: str) -> str:
    resp = http.get(f"{sandbox.sandbox_url}/ehr/launch", params={"user": "dr-patel", "patient": nhs})
    assert resp.status_code == 200, resp.text[:300]
    return resp.url


def table(html: str, name: str) -> str:
    m = re.search(rf'<table[^>]*id="table-medications-{name}".*?</table>', html, re.S)
    assert m, f"no {name} table"
    return m.group(0)


def test_current_and_past_are_separate_tables_with_full_lines(sandbox, http) -> None:
    base = launch(sandbox, http, MARGARET)
    html = http.get(base + "medications").text
    current, past = table(html, "current"), table(html, "past")
    assert re.search(r'<h3 id="group-current">Current medications <span class="count">\(\d+\)</span></h3>', html)
    assert "Past medications" in html
    assert "Metformin 500mg tablets" in current and "Quantity: 112 tablets" in current and "Repeat" in current
    assert "Take TWO tablets twice a day with food" in current and "Dr Anita Patel" in current
    assert "Gliclazide" not in current and "Gliclazide" in past and "Stopped" in past
    assert "Aspirin 75mg" in past and "Aspirin 75mg" not in current
    assert "Paracetamol 500mg tablets" in current and "Recorded as taken" in current  # a MedicationStatement
    assert "Co-amoxiclav" not in current  # the finished hospital course
    assert re.search(r"\d{2}-[A-Z][a-z]{2}-\d{4}", current)  # dates as dd-Mmm-yyyy


def deceased_synthea() -> list:
    import json

    if not synthea_available():
        return []
    out = []
    for path in sorted((SYNTHEA_DIR / "smart-r4-2019").glob("*.json")):
        bundle = json.loads(path.read_text(encoding="utf-8"))
        patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
        meds = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "MedicationRequest"]
        if patient.get("deceasedDateTime") and meds:
            out.append(patient["identifier"][0]["value"])
    return out


@pytest.mark.skipif(not synthea_available(), reason="needs ../shared/data/synthea")
def test_a_deceased_patients_medicines_are_at_time_of_death(sandbox, http) -> None:
    people = deceased_synthea()
    assert people, "the Synthea set has deceased patients with medicines (its README says 8 deceased)"
    dataset = sandbox.state.dataset
    nhs = next(
        p.nhs_number
        for p in dataset.patients.values()
        if p.origin == "synthea"
        and any(
            i.get("value") in people for i in dataset.stores["gp"].read("Patient", p.ids["gp"]).get("identifier") or []
        )
    )
    base = launch(sandbox, http, nhs)
    html = http.get(base + "medications").text
    assert 'id="deceased"' in html
    assert "Medications at time of death" in html and "Current medications" not in html
    summary = http.get(base).text
    assert "Medications at time of death" in summary and "Current medications" not in summary
