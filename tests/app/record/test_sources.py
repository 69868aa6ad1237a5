"""Which organisations a launch reads, and how: the launching EHR's own organisation exactly once."""

from __future__ import annotations

from pathlib import Path

from app.config import load_config
from app.record.sources import record_sources

BASE = """
[viewer]
base_url = "https://scr.example.nhs.uk"

[[source]]
id = "gp"
name = "Hillside Surgery"
ods_code = "B86001"
kind = "gp"
base_url = "https://gp.example.nhs.uk/fhir"
client_id = "scr-backend"
timeout = 4

[[source]]
id = "acute"
name = "Northgate Hospital"
ods_code = "RX9"
kind = "acute"
base_url = "https://hospital.example.nhs.uk/fhir"
client_id = "scr-backend"

[[ehr]]
name = "Hillside clinical system"
issuer = "https://ehr.example.com/r4/tenant-7"
client_id = "scr"
"""


def sources_for(tmp_path: Path, ehr_lines: str):
    path = tmp_path / "scr.toml"
    path.write_text(BASE + ehr_lines, encoding="utf-8")
    config = load_config(path, env={})
    return [
        (s.id, s.name, s.ods_code, s.kind, s.base_url, s.auth, s.timeout)
        for s in record_sources(config, config.ehrs[0].issuer)
    ]


def test_a_bound_ehr_is_its_organisation_read_once_with_the_users_token(tmp_path):
    found = sources_for(tmp_path, 'source = "gp"\n')
    assert found == [
        ("gp", "Hillside Surgery", "B86001", "gp", "https://ehr.example.com/r4/tenant-7", "user", 4.0),
        (
            "acute",
            "Northgate Hospital",
            "RX9",
            "acute",
            "https://hospital.example.nhs.uk/fhir",
            "backend_services",
            5.0,
        ),
    ]


def test_a_bound_ehr_read_with_backend_services_is_read_at_the_sources_base(tmp_path):
    found = sources_for(tmp_path, 'source = "gp"\nread_with = "backend_services"\n')
    assert [(s[0], s[4], s[5]) for s in found] == [
        ("gp", "https://gp.example.nhs.uk/fhir", "backend_services"),
        ("acute", "https://hospital.example.nhs.uk/fhir", "backend_services"),
    ]


def test_an_ehr_with_a_sources_ods_code_is_that_source(tmp_path):
    found = sources_for(tmp_path, 'ods_code = "B86001"\nkind = "gp"\n')
    assert [s[0] for s in found] == ["gp", "acute"]  # not a third, nameless "launching EHR"
    assert found[0][5] == "user"


def test_an_unbound_ehr_is_read_as_the_organisation_its_entry_names(tmp_path):
    found = sources_for(tmp_path, 'ods_code = "NWX01"\nkind = "community"\ntimeout = 9\n')
    assert found[0] == (
        "launching-ehr",
        "Hillside clinical system",
        "NWX01",
        "community",
        "https://ehr.example.com/r4/tenant-7",
        "user",
        9.0,
    )
    assert [s[0] for s in found[1:]] == ["gp", "acute"]
