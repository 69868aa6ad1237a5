"""The CUI patient banner (issue 11 item 4): name, birth date and age, NHS number, death, slim line."""

from __future__ import annotations

from datetime import date

import pytest

from app.views.banner import age_text, patient_banner
from core.names import banner_name

MARGARET = "9991000372"


def patient(**extra) -> dict:
    return {
        "resourceType": "Patient",
        "name": [{"use": "official", "family": "Thompson", "given": ["Margaret", "Ann"], "prefix": ["Mrs"]}],
        "birthDate": "1948-03-05",
        "gender": "female",
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": MARGARET}],
        "address": [{"line": ["14 Mill Lane"], "city": "Leeds", "postalCode": "LS6 2AB"}],
        **extra,
    }


def test_name_is_family_in_capitals_then_given_then_title() -> None:
    assert banner_name(patient()["name"]) == "THOMPSON, Margaret Ann (Mrs)"
    assert banner_name([{"family": "O'Neill", "given": ["Seán"]}]) == "O'NEILL, Seán"
    assert banner_name([{"text": "Baby of Amira Khan"}]) == "Baby of Amira Khan"  # no family: as written
    assert banner_name(None) is None


def test_banner_facts_read_as_the_cui_writes_them() -> None:
    b = patient_banner(patient())
    assert b["name"] == "THOMPSON, Margaret Ann (Mrs)"
    assert b["birth_date"] == "05-Mar-1948"
    assert b["age"] == age_text("1948-03-05")
    assert b["nhs_number"] == "999 100 0372" and b["nhs_number_valid"]
    assert b["gender"] == "Female"
    assert b["address"] == "14 Mill Lane, Leeds, LS6 2AB"
    assert not b["deceased"] and b["full"]


@pytest.mark.parametrize(
    ("born", "on", "shown"),
    [
        ("1948-03-05", date(2026, 3, 4), "77y"),
        ("1948-03-05", date(2026, 3, 5), "78y"),
        ("2025-01-20", date(2026, 3, 5), "13m"),  # under two: months
        ("2026-02-20", date(2026, 3, 5), "13d"),  # under a month: days
    ],
)
def test_age_as_the_cui_writes_it(born: str, on: date, shown: str) -> None:
    assert age_text(born, on) == shown


def test_a_deceased_patient_shows_the_date_and_age_at_death() -> None:
    b = patient_banner(patient(deceasedDateTime="2020-11-02T09:15:00+00:00"))
    assert b["deceased"] and b["died"] == "02-Nov-2020" and b["age"] == "72y"
    only_flag = patient_banner(patient(deceasedBoolean=True))
    assert only_flag["deceased"] and only_flag["died"] is None and only_flag["age"] is None


def test_invalid_and_missing_nhs_numbers_are_said_plainly() -> None:
    bad = patient_banner(patient(identifier=[{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "1234567890"}]))
    assert bad["nhs_number"] == "123 456 7890" and not bad["nhs_number_valid"]
    assert patient_banner(patient(identifier=[]))["nhs_number"] is None


def launch(running, http, *, banner: bool):
    params = {"user": "dr-patel", "patient": MARGARET, "need_patient_banner": "true" if banner else "false"}
    resp = http.get(f"{running.sandbox_url}/ehr/launch", params=params)
    assert resp.status_code == 200, resp.text[:500]
    return resp.text


def test_the_full_banner_over_http(sandbox, http) -> None:
    html = launch(sandbox, http, banner=True)
    assert 'class="patient-banner"' in html
    assert '<h1 class="patient-banner__name" id="patient-name">THOMPSON, Margaret Ann (Mrs)</h1>' in html
    assert '<dd id="born">14-Jun-1948 (' in html and '<dd id="gender">Female</dd>' in html
    assert '<dd id="nhs-number">999 100 0372</dd>' in html


def test_need_patient_banner_false_gives_a_slim_identity_line(sandbox, http) -> None:
    html = launch(sandbox, http, banner=False)
    assert 'class="patient-banner"' not in html and 'class="patient-line"' in html
    assert 'id="patient-name">THOMPSON, Margaret Ann (Mrs)</h1>' in html
    assert '<strong id="nhs-number">999 100 0372</strong>' in html
    assert "Address" not in html.split('id="patient-banner"', 1)[1].split("</section>", 1)[0]
