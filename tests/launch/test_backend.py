"""SMART Backend Services tokens for the organisations' servers: the sandbox and an independent server."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import requests

from core.state.store import MemoryStore
from launch.backend import BackendTokens
from launch.discovery import OAUTH_URIS, Discovery, token_endpoint_from_capabilities
from launch.errors import DiscoveryFailed, TokenError


@pytest.fixture
def backend(sandbox):
    services = sandbox.viewer_app.extensions["launch"]
    return BackendTokens(MemoryStore(), Discovery(), services.keyset)


def test_token_per_source_from_the_sandbox_and_it_reads(sandbox, backend):
    for source in sandbox.config.sources:
        token = backend.token_for(source)
        resp = requests.get(
            f"{source.base_url}/Patient", params={"_count": 1}, headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert resp.status_code == 200, source.id


def test_tokens_are_cached_until_shortly_before_expiry(sandbox, backend):
    source = sandbox.config.sources[0]
    before = len(sandbox.state.backend_tokens)
    first = backend.token_for(source)
    assert backend.token_for(source) == first
    assert len(sandbox.state.backend_tokens) == before + 1
    cached = backend.store.get(f"backend:{source.id}")
    cached["expires_at"] = time.time() + 30  # inside the early-renewal window
    backend.store.set(f"backend:{source.id}", cached, ttl=30)
    assert backend.token_for(source) != first
    assert len(sandbox.state.backend_tokens) == before + 2


def test_a_burst_of_callers_gets_one_token(sandbox, backend):
    import threading

    source = sandbox.config.sources[1]
    before = len(sandbox.state.backend_tokens)
    got = []
    threads = [threading.Thread(target=lambda: got.append(backend.token_for(source))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 1 and len(got) == 8
    assert len(sandbox.state.backend_tokens) == before + 1


def test_token_endpoint_refusal_is_a_token_error(sandbox, backend, http):
    http.post(f"{sandbox.sandbox_url}/admin/switches", json={"invalid_client": True}).raise_for_status()
    with pytest.raises(TokenError, match="401"):
        backend.token_for(sandbox.config.sources[0])


def test_unreachable_source_is_a_discovery_error(sandbox, backend):
    source = replace(sandbox.config.sources[0], base_url="http://127.0.0.1:9/fhir")
    with pytest.raises(DiscoveryFailed):
        backend.token_for(source)


def test_source_without_backend_services_is_refused(sandbox, backend):
    source = replace(sandbox.config.sources[0], auth="none")
    with pytest.raises(TokenError, match="not configured"):
        backend.token_for(source)


def test_es384_assertions(sandbox, backend):
    source = replace(sandbox.config.sources[2], signing_alg="ES384")
    assert backend.token_for(source)


# ---- where the token endpoint comes from (SMART Backend Services: no authorization_endpoint needed) --------


def smart_profile(sandbox, http, org: str, discovery: str) -> None:
    resp = http.post(f"{sandbox.sandbox_url}/admin/smart/{org}", json={"discovery": discovery}, timeout=10)
    assert resp.status_code == 200, resp.text


def test_a_backend_services_only_server_advertises_no_authorization_endpoint_and_is_read(sandbox, backend, http):
    smart_profile(sandbox, http, "hospital", "token_endpoint_only")
    source = next(s for s in sandbox.config.sources if s.id == "hospital")
    doc = http.get(f"{source.base_url}/.well-known/smart-configuration", timeout=10).json()
    assert "authorization_endpoint" not in doc and doc["token_endpoint"]
    token = backend.token_for(source)
    resp = http.get(f"{source.base_url}/Patient", params={"_count": 1}, headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 200
    assert backend.discovery.configuration(source.base_url).authorization_endpoint is None


def test_without_a_smart_configuration_the_capability_statement_gives_the_token_endpoint(sandbox, backend, http):
    smart_profile(sandbox, http, "community", "capability_statement_only")
    source = next(s for s in sandbox.config.sources if s.id == "community")
    assert http.get(f"{source.base_url}/.well-known/smart-configuration", timeout=10).status_code == 404
    assert backend.token_for(source)
    assert backend.discovery.token_endpoint(source.base_url) == f"{sandbox.sandbox_url}/auth/token"


def test_an_explicit_token_url_is_used_without_discovery(sandbox, backend, http):
    smart_profile(sandbox, http, "council", "capability_statement_only")
    source = replace(
        next(s for s in sandbox.config.sources if s.id == "council"),
        base_url="http://127.0.0.1:9/fhir",  # nothing listens: any discovery request would fail
        token_url=f"{sandbox.sandbox_url}/auth/token",
    )
    assert backend.token_for(source)


def test_no_way_to_find_a_token_endpoint_is_a_discovery_error(sandbox, backend, http):
    smart_profile(sandbox, http, "council", "capability_statement_only")
    source = replace(
        next(s for s in sandbox.config.sources if s.id == "council"), base_url=f"{sandbox.sandbox_url}/nowhere"
    )
    with pytest.raises(DiscoveryFailed, match="no token endpoint"):
        backend.token_for(source)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"resourceType": "Patient"}, "not a CapabilityStatement"),
        ({"resourceType": "CapabilityStatement", "rest": [{"mode": "server"}]}, "no SMART oauth-uris token"),
        (
            {
                "resourceType": "CapabilityStatement",
                "rest": [
                    {
                        "security": {
                            "extension": [
                                {
                                    "url": OAUTH_URIS,
                                    "extension": [{"url": "token", "valueUri": "http://evil.example/t"}],
                                }
                            ]
                        }
                    }
                ],
            },
            "must be https",
        ),
    ],
)
def test_capability_statements_without_a_usable_token_uri_are_refused(doc, message):
    with pytest.raises(DiscoveryFailed, match=message):
        token_endpoint_from_capabilities(doc)


def test_the_viewer_reads_a_backend_services_only_organisation_in_a_launch(sandbox, http):
    smart_profile(sandbox, http, "hospital", "token_endpoint_only")
    sandbox.viewer_app.extensions["launch"].discovery.clear()
    sandbox.viewer_app.extensions["launch"].backend.store.delete("backend:hospital")
    resp = http.get(
        f"{sandbox.sandbox_url}/ehr/launch", params={"user": "dr-patel", "patient": "9991000372"}, timeout=30
    )
    assert resp.status_code == 200, resp.text[:1000]
    assert "Northgate Hospitals NHS Foundation Trust" in resp.text
    hospital_reads = [
        r for r in sandbox.state.requests if "/fhir/hospital/" in r.url and r.client_id == "scr-viewer-backend"
    ]
    assert hospital_reads, "the hospital was not read with Backend Services"
