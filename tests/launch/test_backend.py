"""SMART Backend Services tokens for the organisations' servers: the sandbox and an independent server."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import requests

from core.state.store import MemoryStore
from launch.backend import BackendTokens
from launch.discovery import Discovery
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
