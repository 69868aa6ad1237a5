"""The viewer's backend-services client against sekmet-fhir, a FHIR server written by others."""

from __future__ import annotations

import requests

from app.config import Source
from core.state.store import MemoryStore
from launch.backend import BackendTokens
from launch.discovery import Discovery


def test_viewer_backend_client_gets_a_token_that_reads_the_patient(sekmet):
    source = Source(
        id="sekmet",
        name="Independent server",
        ods_code="X99",
        kind="acute",
        base_url=sekmet.base_url,
        auth="backend_services",
        client_id=sekmet.client_id,
        scopes="system/*.rs",
        signing_alg="RS384",
        timeout=10,
    )
    backend = BackendTokens(MemoryStore(), Discovery(), sekmet.keyset)
    token = backend.token_for(source)
    assert backend.token_for(source) == token  # cached
    found = requests.get(
        f"{sekmet.base_url}/Patient",
        params={"identifier": f"https://fhir.nhs.uk/Id/nhs-number|{sekmet.patient_nhs_number}"},
        headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"},
        timeout=30,
    ).json()
    matches = [e for e in found.get("entry", []) if e.get("search", {}).get("mode", "match") == "match"]
    assert len(matches) == 1
    assert matches[0]["resource"]["birthDate"] == "1948-06-14"
