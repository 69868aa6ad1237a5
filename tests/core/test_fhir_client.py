"""The one FHIR read client and its users: the launching EHR's reads, the record fan-out's GETs, and
discovery (which shares the HTTP layer and keeps its caches in cachetools)."""

from __future__ import annotations

import time

import pytest
from joserfc.jwk import ECKey

from app.record.fetch import FetchJob, SourceProblem
from app.record.sources import RecordSource
from core.fhir_client import BadStatus, FhirReader, NotFhir, OutsideBase, TokenSource
from core.http import Malformed
from launch import discovery as discovery_module
from launch.discovery import Discovery
from launch.ehr_client import EhrFhirClient
from launch.errors import DiscoveryFailed, RelaunchRequired, SourceError

from .rawserver import RawServer, reset, response

PATIENT = {"resourceType": "Patient", "id": "p1"}
BUNDLE = {"resourceType": "Bundle", "type": "searchset", "entry": []}


def bearer_only(good: str, body: dict = PATIENT):
    def respond(server, seen, conn):
        if seen.headers.get("Authorization") != f"Bearer {good}":
            return response({"resourceType": "OperationOutcome"}, status=401)
        return response(body)

    return respond


def tokens(current: str, renewed: str | None, calls: list[str]) -> TokenSource:
    def get():
        calls.append("get")
        return current

    def renew():
        calls.append("renew")
        return renewed

    return TokenSource(get, renew)


# ---- FhirReader ---------------------------------------------------------------------------------------------------


def test_a_401_renews_the_token_once_and_retries():
    calls: list[str] = []
    with RawServer(bearer_only("new")) as server:
        reader = FhirReader(server.base + "/fhir", tokens("old", "new", calls), request_id="rid-401")
        assert reader.get("Patient/p1") == PATIENT
    assert calls == ["get", "renew"]
    assert [s.headers["Authorization"] for s in server.log] == ["Bearer old", "Bearer new"]
    assert {s.headers["X-Request-Id"] for s in server.log} == {"rid-401"}
    assert {s.headers["Accept"] for s in server.log} == {"application/fhir+json"}


def test_a_401_without_a_new_token_is_a_bad_status():
    calls: list[str] = []
    with RawServer(bearer_only("never")) as server, pytest.raises(BadStatus) as caught:
        FhirReader(server.base, tokens("old", None, calls)).get("Patient/p1")
    assert caught.value.status == 401 and calls == ["get", "renew"] and len(server.log) == 1


def test_a_401_renewed_still_401_is_not_retried_again():
    calls: list[str] = []
    with RawServer(bearer_only("never")) as server, pytest.raises(BadStatus):
        FhirReader(server.base, tokens("old", "also-wrong", calls)).get("Patient/p1")
    assert calls == ["get", "renew"] and len(server.log) == 2


def test_a_reference_outside_the_base_is_refused_before_any_token_is_read():
    calls: list[str] = []
    reader = FhirReader("https://ehr.example/fhir", tokens("t", "t2", calls))
    for ref in ("https://evil.example/fhir/Patient/1", "http://ehr.example/fhir/Patient/1", "https://ehr.example/x/1"):
        assert reader.resolve(ref) is None
        with pytest.raises(OutsideBase):
            reader.get(ref)
    assert calls == []
    assert reader.resolve("Patient/1") == "https://ehr.example/fhir/Patient/1"
    assert reader.resolve("https://ehr.example/fhir/Patient/1") == "https://ehr.example/fhir/Patient/1"
    origin = FhirReader("https://ehr.example/fhir", scope="origin")
    assert origin.resolve("https://ehr.example/x/1") == "https://ehr.example/x/1"


@pytest.mark.parametrize(
    ("body", "expect", "error"),
    [
        (b'{"resourceType": "Bundle", "entry": [{"resou', None, Malformed),
        (b'["not", "a", "resource"]', None, NotFhir),
        (b'{"id": "no-type"}', None, NotFhir),
        (b'{"resourceType": "Patient"}', "Bundle", NotFhir),
    ],
)
def test_body_checks(body, expect, error):
    with RawServer(lambda server, seen, conn: response(body)) as server, pytest.raises(error):
        FhirReader(server.base).get("Patient", expect=expect)


# ---- EhrFhirClient: the launching EHR, with the user's token --------------------------------------------------


class FakeTokens:
    def __init__(self, current: str, renewed: str | Exception) -> None:
        self.current, self.renewed, self.calls = current, renewed, []

    def access_token(self, ctx_id: str, force_refresh: bool = False) -> str:
        self.calls.append((ctx_id, force_refresh))
        if not force_refresh:
            return self.current
        if isinstance(self.renewed, Exception):
            raise self.renewed
        return self.renewed


def test_ehr_client_reads_with_the_user_token_and_refreshes_once():
    manager = FakeTokens("old", "new")
    with RawServer(bearer_only("new")) as server:
        client = EhrFhirClient(manager, "ctx-1", server.base + "/fhir/", request_id="rid-ehr")
        assert client.resolve("Patient/p1") == f"{server.base}/fhir/Patient/p1"
        assert client.get("Patient/p1", params={"_elements": "id"}) == PATIENT
    assert manager.calls == [("ctx-1", False), ("ctx-1", True)]
    assert server.log[0].target == "/fhir/Patient/p1?_elements=id"


def test_ehr_client_failures_are_source_errors():
    with RawServer(lambda server, seen, conn: response({"resourceType": "OperationOutcome"}, status=404)) as server:
        client = EhrFhirClient(FakeTokens("t", "t"), "ctx-1", server.base + "/fhir")
        with pytest.raises(SourceError, match="answered 404"):
            client.get("Patient/p1")
        with pytest.raises(SourceError, match="refusing to send the token outside"):
            client.get("https://evil.example/fhir/Patient/p1")
        assert len(server.log) == 1


def test_ehr_client_lets_relaunch_required_through():
    with RawServer(bearer_only("never")) as server:
        client = EhrFhirClient(FakeTokens("old", RelaunchRequired("no refresh token")), "ctx-1", server.base)
        with pytest.raises(RelaunchRequired):
            client.get("Patient/p1")


# ---- the record fan-out's GET: typed failures become the same plain words ---------------------------------------


def _job(base: str, renewed: str | None = "new"):
    source = RecordSource("org", "Org", "X1", "acute", base, 5.0, "backend_services")
    job = FetchJob([source], "9000000009", {"org": TokenSource(lambda: "old", lambda: renewed)}, "rid-fetch")
    return job, job.results["org"]


def test_fetch_get_renews_once_after_a_401():
    with RawServer(bearer_only("new", BUNDLE)) as server:
        job, result = _job(server.base + "/fhir")
        bundle = job._get(result, f"{server.base}/fhir/Observation", {"patient": "p1"}, time.time() + 5, "old")
    assert bundle == BUNDLE and result.requests == 1
    assert [s.headers["Authorization"] for s in server.log] == ["Bearer old", "Bearer new"]
    assert server.log[0].target == "/fhir/Observation?patient=p1"


def _respond_401(server, seen, conn):
    return response({"resourceType": "OperationOutcome"}, status=401)


def _respond_500(server, seen, conn):
    return response({"resourceType": "OperationOutcome"}, status=500)


def _respond_malformed(server, seen, conn):
    return response(b'{"resourceType": "Bundle", "entry": [{"resou')


def _respond_patient(server, seen, conn):
    return response(PATIENT)


def _respond_reset(server, seen, conn):
    return reset(conn)


@pytest.mark.parametrize(
    ("respond", "reason"),
    [
        (_respond_401, "refused access to this patient's record"),
        (_respond_500, "returned an error (HTTP 500)"),
        (_respond_malformed, "returned data that could not be read (malformed)"),
        (_respond_patient, "returned data that could not be read (not a FHIR Bundle)"),
        (_respond_reset, "could not be reached"),
    ],
    ids=["401", "500", "malformed", "not-bundle", "reset"],
)
def test_fetch_get_reasons(respond, reason):
    with RawServer(respond) as server:
        job, result = _job(server.base + "/fhir", renewed=None)
        with pytest.raises(SourceProblem) as caught:
            job._get(result, f"{server.base}/fhir/Observation", None, time.time() + 5, "old")
    assert caught.value.reason == reason


def test_fetch_get_past_the_deadline_sends_nothing():
    with RawServer(_respond_patient) as server:
        job, result = _job(server.base + "/fhir")
        with pytest.raises(SourceProblem, match="did not respond in time"):
            job._get(result, f"{server.base}/fhir/Observation", None, time.time() - 1, "old")
    assert server.log == [] and result.requests == 0


def test_fetch_get_refuses_another_origin():
    job, result = _job("https://org.example/fhir")
    with pytest.raises(SourceProblem, match="sent a link to another server"):
        job._get(result, "https://evil.example/fhir/Observation?page=2", None, time.time() + 5, "old")


# ---- discovery: the HTTP layer plus cachetools -----------------------------------------------------------------


class FakeIssuer:
    def __init__(self) -> None:
        self.kid = "k1"
        self.server = RawServer(self._respond)

    def _respond(self, server, seen, conn):
        if seen.target.endswith("/.well-known/smart-configuration"):
            return response(
                {
                    "authorization_endpoint": f"{server.base}/auth/authorize",
                    "token_endpoint": f"{server.base}/auth/token",
                    "jwks_uri": f"{server.base}/auth/jwks",
                    "code_challenge_methods_supported": ["S256"],
                    "capabilities": ["launch-ehr"],
                },
                content_type="application/json",
            )
        if seen.target == "/auth/jwks":
            key = ECKey.generate_key("P-256", parameters={"kid": self.kid}, private=True)
            return response({"keys": [key.as_dict(private=False)]}, content_type="application/json")
        return response({"error": "not found"}, status=404, content_type="application/json")

    def count(self, suffix: str) -> int:
        return sum(1 for s in self.server.log if s.target.endswith(suffix))


@pytest.fixture
def issuer():
    fake = FakeIssuer()
    yield fake
    fake.server.close()


def test_discovery_is_cached_until_its_ttl_or_clear(issuer):
    discovery = Discovery(ttl=0.3)
    base = issuer.server.base + "/fhir"
    first = discovery.configuration(base)
    assert first.token_endpoint == f"{issuer.server.base}/auth/token"
    assert discovery.configuration(base) is first
    assert issuer.count("smart-configuration") == 1
    time.sleep(0.4)
    discovery.configuration(base)
    assert issuer.count("smart-configuration") == 2
    discovery.clear()
    discovery.configuration(base)
    assert issuer.count("smart-configuration") == 3
    assert issuer.server.log[0].headers["Accept"] == "application/json"


def test_jwks_refetch_on_unknown_kid_is_rate_limited(issuer, monkeypatch):
    discovery = Discovery()
    uri = issuer.server.url("/auth/jwks")
    keys = discovery.jwks(uri)
    assert discovery.jwks(uri) is keys
    assert discovery.jwks(uri, refresh=True) is keys  # asked again within 30 s: the cached set
    assert issuer.count("/auth/jwks") == 1
    later = time.monotonic() + discovery_module.JWKS_MIN_REFETCH + 1
    monkeypatch.setattr(discovery_module.time, "monotonic", lambda: later)
    assert discovery.jwks(uri, refresh=True) is not keys
    assert issuer.count("/auth/jwks") == 2


def test_discovery_failures_are_plain(issuer):
    discovery = Discovery()
    with pytest.raises(DiscoveryFailed, match="answered 404"):
        discovery.jwks(issuer.server.url("/nothing-here"))
    with RawServer(_respond_reset) as down, pytest.raises(DiscoveryFailed) as caught:
        discovery.configuration(down.base + "/fhir")
    assert caught.value.status == 502 and "connection broken twice" in caught.value.detail
