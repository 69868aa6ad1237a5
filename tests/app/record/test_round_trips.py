"""Fewer sequential round trips: the chained search, the next page asked for first, and whole launches.

The first part runs FetchJob against a small loopback FHIR server that records when each request arrived
and when it was answered (and can be slow to answer), so "started before the other answered" is checked
exactly. The second part runs whole launches through the sandbox with every organisation slowed down, and
measures the chain depth from the sandbox's request log: the number of requests, one after another, before
a request could start.
"""

from __future__ import annotations

import gc
import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from app.config import LimitSettings
from app.record import fetch as fetch_module
from app.record.catalogue import CATALOGUE
from app.record.fetch import FAILED, LOADED, NOT_FOUND, FetchJob, forget_capabilities
from app.record.sources import RecordSource
from app.services import services
from core.nhs_number import NHS_NUMBER_SYSTEM
from sandbox.fhir_server import set_chained_search

NHS = "9991000372"
PID = "p-1"

CHAIN_DECLARED = {
    "resourceType": "CapabilityStatement",
    "status": "active",
    "kind": "instance",
    "fhirVersion": "4.0.1",
    "contained": [
        {
            "resourceType": "SearchParameter",
            "id": "pat",
            "url": "http://example.org/SearchParameter/pat",
            "name": "patient",
            "status": "active",
            "description": "patient, chained on identifier",
            "code": "patient",
            "base": ["Observation", "Condition"],
            "type": "reference",
            "target": ["Patient"],
            "chain": ["identifier"],
        }
    ],
    "rest": [
        {
            "mode": "server",
            "resource": [
                {
                    "type": "Observation",
                    "searchParam": [{"name": "patient", "type": "reference", "definition": "#pat"}],
                },
                {
                    "type": "Condition",
                    "searchParam": [
                        {
                            "name": "patient",
                            "type": "reference",
                            "definition": "http://example.org/SearchParameter/pat",
                        }
                    ],
                },
            ],
        }
    ],
}
NOT_DECLARED = {
    "resourceType": "CapabilityStatement",
    "status": "active",
    "kind": "instance",
    "fhirVersion": "4.0.1",
    "rest": [{"mode": "server", "resource": [{"type": "Observation", "searchParam": [{"name": "patient"}]}]}],
}


@dataclass
class Seen:
    path: str
    query: dict[str, list[str]]
    started: float
    answered: float = 0.0


def patient(pid: str, nhs: str = NHS) -> dict:
    return {"resourceType": "Patient", "id": pid, "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": nhs}]}


def observation(oid: str, pid: str) -> dict:
    return {"resourceType": "Observation", "id": oid, "subject": {"reference": f"Patient/{pid}"}}


class Org:
    """One organisation: Patients, Observations and Conditions by patient id or (when it chains) by the
    patient's NHS number, paged by ``_offset``; ``delays`` slows answers per resource type."""

    def __init__(self) -> None:
        self.statement: dict | None = CHAIN_DECLARED
        self.patients = [patient(PID)]
        self.observations = [observation(f"o{i}", PID) for i in range(5)]
        self.conditions = [{"resourceType": "Condition", "id": "c1", "subject": {"reference": f"Patient/{PID}"}}]
        self.delays: dict[str, float] = {}
        self.refuse_chain = False  # answer 400 to patient.identifier although the statement declares it
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        org = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True

            def do_GET(self):  # noqa: N802
                parts = urlsplit(self.path)
                seen = Seen(parts.path, parse_qs(parts.query), time.monotonic())
                with org.lock:
                    org.seen.append(seen)
                status, body = org.answer(parts.path.rsplit("/", 1)[-1], seen.query)
                time.sleep(org.delays.get(parts.path.rsplit("/", 1)[-1], 0))
                data = json.dumps(body).encode()
                seen.answered = time.monotonic()  # before the answer leaves: the client cannot have it sooner
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.server_port}/fhir"

    def answer(self, rtype: str, query: dict[str, list[str]]) -> tuple[int, dict]:
        if rtype == "metadata":
            return (200, self.statement) if self.statement else (404, {"resourceType": "OperationOutcome"})
        if rtype == "Patient":
            nhs = query["identifier"][0].split("|", 1)[1]
            return 200, self.page("Patient", [p for p in self.patients if p["identifier"][0]["value"] == nhs], query)
        held = {"Observation": self.observations, "Condition": self.conditions}[rtype]
        if "patient.identifier" in query:
            if self.refuse_chain:
                return 400, {"resourceType": "OperationOutcome"}
            nhs = query["patient.identifier"][0].split("|", 1)[1]
            ids = {p["id"] for p in self.patients if p["identifier"][0]["value"] == nhs}
        else:
            ids = {query["patient"][0]}
        return 200, self.page(rtype, [r for r in held if r["subject"]["reference"].split("/")[-1] in ids], query)

    def page(self, rtype: str, matches: list[dict], query: dict[str, list[str]]) -> dict:
        count, offset = int(query.get("_count", ["1000"])[0]), int(query.get("_offset", ["0"])[0])
        links = []
        if offset + count < len(matches):
            rest = {k: v[0] for k, v in query.items() if k not in ("_offset", "_count")}
            url = f"{self.base}/{rtype}?{urlencode({**rest, '_count': count, '_offset': offset + count})}"
            links.append({"relation": "next", "url": url})
        entries = [{"resource": r, "search": {"mode": "match"}} for r in matches[offset : offset + count]]
        return {"resourceType": "Bundle", "type": "searchset", "link": links, "entry": entries}

    def requests(self, rtype: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.path.endswith(f"/{rtype}")]

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture
def org():
    forget_capabilities()
    server = Org()
    yield server
    server.close()
    forget_capabilities()


def fetch(org: Org, types=("Observation", "Condition"), **kw) -> FetchJob:
    source = RecordSource("org", "Eastgate", "NT401", "acute", org.base, 10.0, "none")
    fields = {"Observation": "subject", "Condition": "subject"}
    job = FetchJob([source], NHS, {}, "test-request", types=types, patient_fields=fields, **kw).start()
    assert job.wait(20), "the fetch never finished"
    return job


def warm(org: Org) -> None:
    """A first fetch reads the CapabilityStatement (alongside the Patient search); the next ones use it."""
    fetch(org)
    assert org.requests("metadata")
    with org.lock:
        org.seen.clear()


# ---- the chained search ----------------------------------------------------------------------------------


def test_a_source_that_declares_the_chain_is_searched_in_the_same_round_trip_as_the_patient(org):
    warm(org)
    org.delays["Patient"] = 0.3
    job = fetch(org)
    result = job.results["org"]
    assert result.state == LOADED and result.patient["id"] == PID
    assert [r["id"] for r in result.resources["Observation"]] == [f"o{i}" for i in range(5)]
    assert [r["id"] for r in result.resources["Condition"]] == ["c1"]
    (search,) = org.requests("Patient")
    for rtype in ("Observation", "Condition"):
        (first,) = org.requests(rtype)
        assert first.query["patient.identifier"] == [f"{NHS_NUMBER_SYSTEM}|{NHS}"] and "patient" not in first.query
        assert first.started < search.answered, f"{rtype} waited for the Patient search"
    assert not org.requests("metadata")  # known for an hour: not read again


def test_without_the_declaration_the_patient_is_found_first(org):
    org.statement = NOT_DECLARED
    warm(org)
    org.delays["Patient"] = 0.2
    result = fetch(org).results["org"]
    assert result.state == LOADED and len(result.resources["Observation"]) == 5
    (search,) = org.requests("Patient")
    for rtype in ("Observation", "Condition"):
        (first,) = org.requests(rtype)
        assert first.query["patient"] == [PID] and "patient.identifier" not in first.query
        assert first.started >= search.answered


def test_no_capability_statement_at_all_means_no_chain(org):
    org.statement = None
    warm(org)
    fetch(org)
    assert all("patient.identifier" not in s.query for s in org.seen)


def test_the_first_fetch_reads_the_statement_alongside_the_patient_search_without_waiting_for_it(org):
    org.delays["metadata"] = 0.3
    result = fetch(org).results["org"]
    assert result.state == LOADED and all("patient.identifier" not in s.query for s in org.seen)
    (metadata,), (search,) = org.requests("metadata"), org.requests("Patient")
    assert search.started < metadata.answered  # side by side: the statement adds no round trip
    with org.lock:
        org.seen.clear()
    fetch(org)
    assert org.requests("Observation")[0].query.get("patient.identifier")  # the next launch chains


def test_resources_about_another_patient_with_the_same_number_are_never_kept(org):
    # A server answering the chained search with items about other patients (p-2 carries another number, p-3
    # is not known at all): only what is about the one Patient the Patient search found is kept.
    org.patients.append(patient("p-2", nhs="9990000000"))
    original = org.answer

    def answer(rtype, query):
        if "patient.identifier" in query and rtype == "Observation":
            status, body = original(rtype, query)
            body["entry"].append({"resource": observation("other", "p-2"), "search": {"mode": "match"}})
            body["entry"].append({"resource": observation("stranger", "p-3"), "search": {"mode": "match"}})
            return status, body
        return original(rtype, query)

    org.answer = answer
    warm(org)
    result = fetch(org).results["org"]
    assert result.state == LOADED
    assert [r["id"] for r in result.resources["Observation"]] == [f"o{i}" for i in range(5)]
    assert result.dropped == 2


def test_nothing_is_kept_when_the_patient_is_not_found_and_the_source_ends_quiet(org):
    warm(org)
    org.patients = []
    org.observations = [observation("o1", PID)]  # the chained search would return something
    org.delays["Observation"] = 0.3  # still out when the Patient search says "not here"
    job = fetch(org)
    result = job.results["org"]
    assert result.state == NOT_FOUND and result.resources == {} and result.patient is None
    assert all(s.answered for s in org.seen), "the source was done with a request still out"


def test_two_patients_with_the_number_fail_the_source_and_nothing_is_kept(org):
    warm(org)
    org.patients.append(patient("p-2"))
    org.observations.append(observation("o-p2", "p-2"))
    result = fetch(org).results["org"]
    assert result.state == FAILED and result.resources == {}
    assert "more than one record" in result.reasons[0]


def test_a_declared_chain_the_server_refuses_falls_back_to_the_patients_id(org):
    warm(org)
    org.refuse_chain = True
    result = fetch(org).results["org"]
    assert result.state == LOADED and len(result.resources["Observation"]) == 5 and result.reasons == []
    assert org.requests("Observation")[-1].query["patient"] == [PID]
    with org.lock:
        org.seen.clear()
    fetch(org)
    assert all("patient.identifier" not in s.query for s in org.seen)  # not tried again for a while


def test_the_chain_can_be_turned_off(org):
    warm(org)
    fetch(org, chaining=False)
    assert all("patient.identifier" not in s.query for s in org.seen)


def test_the_sequential_mode_never_chains(org):
    warm(org)
    source = RecordSource("org", "Eastgate", "NT401", "acute", org.base, 10.0, "none")
    job = FetchJob([source], NHS, {}, "r", types=("Observation",), patient_fields={"Observation": "subject"})
    job.start(sequential=True)
    assert job.results["org"].state == LOADED
    assert all("patient.identifier" not in s.query for s in org.seen)


# ---- the next page first -----------------------------------------------------------------------------------


@pytest.mark.parametrize("chained", [True, False])
def test_the_next_page_is_asked_for_before_the_current_one_is_filtered(org, monkeypatch, chained):
    if not chained:
        org.statement = NOT_DECLARED
    org.observations = [observation(f"o{i}", PID) for i in range(12)]
    warm(org)
    monkeypatch.setattr(fetch_module, "PAGE_SIZE", 5)
    filtering: list[int] = []  # Observation requests the server had seen when each page's filtering began
    original = fetch_module._about_patient

    def about_patient(resource, field, pid, base):
        if resource["resourceType"] == "Observation" and resource["id"] in ("o0", "o5"):
            deadline = time.monotonic() + 2
            page = 1 if resource["id"] == "o0" else 2
            while len(org.requests("Observation")) <= page and time.monotonic() < deadline:
                time.sleep(0.01)  # the next page's request is on its way: wait until the server has it
            filtering.append(len(org.requests("Observation")))
        return original(resource, field, pid, base)

    monkeypatch.setattr(fetch_module, "_about_patient", about_patient)
    result = fetch(org, types=("Observation",)).results["org"]
    assert [r["id"] for r in result.resources["Observation"]] == [f"o{i}" for i in range(12)]
    assert filtering == [2, 3]  # page 2 asked for while page 1 was filtered; page 3 while page 2 was
    assert len(org.requests("Observation")) == 3


def test_a_page_asked_for_ahead_is_taken_back_when_the_list_is_cut(org, monkeypatch):
    org.observations = [observation(f"o{i}", PID) for i in range(20)]
    warm(org)
    monkeypatch.setattr(fetch_module, "PAGE_SIZE", 5)
    result = fetch(org, types=("Observation",), limits=LimitSettings(resources_per_type=7)).results["org"]
    assert len(result.resources["Observation"]) == 7 and result.cuts
    assert all(s.answered for s in org.seen)  # nothing still out once the source is done


# ---- whole launches through the sandbox --------------------------------------------------------------------

ORGS = ("gp", "hospital", "community", "council")
LATENCY_MS = 400


@dataclass
class Request:
    org: str
    path: str
    query: dict[str, list[str]]
    started: float
    ended: float
    depth: int = 0


def depths(requests: list[Request]) -> list[Request]:
    """Each request's chain depth: 1 + the deepest request that had answered before it started."""
    ordered = sorted(requests, key=lambda r: r.started)
    for r in ordered:
        r.depth = 1 + max((q.depth for q in ordered if q.ended <= r.started and q is not r), default=0)
    return ordered


def sandbox_requests(sandbox, since: float) -> list[Request]:
    out = []
    for r in list(sandbox.state.requests):
        if r.at < since:
            continue
        parts = urlsplit(r.url)
        path = parts.path.split(f"/fhir/{r.org_id}", 1)[-1]
        if path.startswith("/.well-known/"):  # SMART discovery (before the authorize redirect; cached): not counted
            continue
        out.append(Request(r.org_id, path, parse_qs(parts.query), r.at - r.duration_ms / 1000, r.at))
    return depths(out)


def launch(http, sandbox, user="dr-patel", nhs=NHS) -> tuple[str, list[Request]]:
    """One EHR launch, waited for until every organisation has answered; its requests with their depths."""
    started = time.time()
    resp = http.get(f"{sandbox.sandbox_url}/ehr/launch", params={"user": user, "patient": nhs})
    assert resp.status_code == 200, resp.text[:2000]
    ctx_id = re.search(r"/r/([^/]+)/", resp.url).group(1)
    record = services(sandbox.viewer_app).record
    ctx = sandbox.viewer_app.extensions["launch"].contexts.load(ctx_id)
    assert record.gather(ctx, "test").wait(30)
    time.sleep(0.3)  # the access checks' own reads, started with the gathering
    return ctx_id, sandbox_requests(sandbox, started)


def first(requests: list[Request], org: str, rtype: str) -> Request:
    return min((r for r in requests if r.org == org and r.path == f"/{rtype}"), key=lambda r: r.started)


def counts(sandbox, ctx_id: str) -> dict[str, dict[str, int]]:
    record = services(sandbox.viewer_app).record
    gathering = record.gather(sandbox.viewer_app.extensions["launch"].contexts.load(ctx_id), "test")
    return {r.source.id: {t: len(v) for t, v in r.resources.items()} for r in gathering.results}


@pytest.fixture
def slow(sandbox, http):
    """Every organisation answers after LATENCY_MS, so requests sent together overlap beyond doubt; one
    launch first, so Backend Services tokens and CapabilityStatements are known (as they are after the
    first launch of the hour)."""
    forget_capabilities()
    sandbox.viewer_app.extensions["launch"].discovery.clear()  # another test may have left a SMART profile
    launch(http, sandbox)
    pool_quiet()
    for org in ORGS:
        sandbox.state.set_faults(org, latency_ms=LATENCY_MS)
    # After the whole suite this test process holds every earlier test's records: one full collection can
    # pause every thread for longer than a round trip, and a request sent together would look sequential.
    # The timings here are of the viewer's requests, not of the test process's collector.
    gc.collect()
    gc.disable()
    try:
        yield sandbox
    finally:
        gc.enable()
        forget_capabilities()


def pool_quiet(timeout: float = 20.0) -> None:
    """Wait until the process-wide fetch pool runs new work at once: an earlier test's reads still in flight
    (a slow organisation's pages, discarded read-ahead) would otherwise queue this launch's requests and make
    its round trips look sequential."""
    from core.http import fetch_executor

    wanted = len(ORGS) * (len(CATALOGUE.fetch_types) + 2)  # one launch's first round, all at once
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        together = threading.Barrier(wanted)  # passes only if that many pool threads are free at once

        def meet(barrier: threading.Barrier = together) -> bool:
            try:
                barrier.wait(timeout=0.5)
                return True
            except threading.BrokenBarrierError:
                return False

        if all(f.result(timeout=timeout) for f in [fetch_executor().submit(meet) for _ in range(wanted)]):
            return
        time.sleep(0.2)


def first_pages(requests: list[Request], org: str) -> list[Request]:
    """The organisation's first page of every list (no ``_offset``)."""
    return [
        r for r in requests if r.org == org and r.path.lstrip("/") in CATALOGUE.fetch_types and "_offset" not in r.query
    ]


def test_a_launch_reads_the_patient_once_alongside_identity_and_chains_at_every_other_organisation(http, slow):
    ctx_id, requests = launch(http, slow)
    # The callback: the Patient read and the PractitionerRole search (Practitioner included) side by side.
    (read,) = [r for r in requests if r.org == "gp" and r.path == "/Patient/gp-pat-thompson"]
    (role,) = [r for r in requests if r.org == "gp" and r.path == "/PractitionerRole"]
    assert role.query["_include"] == ["PractitionerRole:practitioner"]
    assert read.started < role.ended and role.started < read.ended, "not side by side"
    assert read.depth == role.depth == 1
    assert not [r for r in requests if r.path == "/Practitioner/gp-prac-patel"]  # included: not read
    # The launching EHR's lists follow the Patient read at once; every other organisation's lists go out with
    # its Patient search.
    assert {r.depth for r in first_pages(requests, "gp")} == {2}
    for org in ("hospital", "community", "council"):
        (search,) = [r for r in requests if r.org == org and r.path == "/Patient"]
        pages = first_pages(requests, org)
        assert sorted(r.path.lstrip("/") for r in pages) == sorted(CATALOGUE.fetch_types)
        for page in pages:
            assert page.query["patient.identifier"] == [f"{NHS_NUMBER_SYSTEM}|{NHS}"], (org, page.path)
            assert page.started < search.ended and page.depth == search.depth == 2, (org, page.path)
    assert not [r for r in requests if r.path == "/metadata"]  # known from the first launch
    assert all(counts(slow, ctx_id)[org] for org in ORGS)


def test_an_organisation_that_does_not_declare_the_chain_is_read_the_usual_way_with_the_same_record(http, slow):
    chained_ctx, _ = launch(http, slow)
    set_chained_search(slow.sandbox_app, "hospital", False)
    try:
        forget_capabilities()
        launch(http, slow)  # learns that the hospital does not chain
        ctx_id, requests = launch(http, slow)
    finally:
        set_chained_search(slow.sandbox_app, "hospital", True)
    assert not [r for r in requests if r.org == "hospital" and "patient.identifier" in r.query]
    (search,) = [r for r in requests if r.org == "hospital" and r.path == "/Patient"]
    for page in first_pages(requests, "hospital"):
        assert page.started >= search.ended and page.depth == search.depth + 1 == 3
    assert {r.depth for r in first_pages(requests, "community")} == {2}  # the others still chain
    assert counts(slow, ctx_id) == counts(slow, chained_ctx)  # the same record either way


def test_chain_depth_per_organisation(http, slow):
    """How many requests, one after another, came before each organisation's lists were asked for."""
    _, requests = launch(http, slow)
    depth = {org: max(r.depth for r in first_pages(requests, org)) for org in ORGS}
    # Before: identity → EHR Patient → gp lists (3); → Patient search → lists (4) at every other organisation.
    assert depth == {"gp": 2, "hospital": 2, "community": 2, "council": 2}, depth
    assert max(r.depth for r in requests) == 2  # and nothing deeper: Margaret's lists each fit one page
