"""What the callback reads at the launching EHR, and how many round trips it takes.

The user's PractitionerRole and Practitioner come in one request (``_include``), falling back to reading the
Practitioner when the answer lacks it (and, at an EHR that does not include, to the two reads side by side
from then on). The launch's Patient is read alongside, once, and handed to the record gathering.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from core.identifiers import ACTIVITY_CODE_SYSTEM, JOB_ROLE_SYSTEM
from launch.ehr_client import EhrFhirClient
from launch.flow import CallbackReads
from launch.identity import NO_INCLUDE, resolve_identity
from tests.app.record.test_round_trips import sandbox_requests
from tests.smart import ehr_client

MARGARET = "9991000372"
PRACTITIONER = {"resourceType": "Practitioner", "id": "p1", "name": [{"family": "Okafor", "given": ["Ada"]}]}
ROLE = {
    "resourceType": "PractitionerRole",
    "id": "pr1",
    "practitioner": {"reference": "Practitioner/p1"},
    "organization": {"reference": "Organization/o1", "identifier": {"value": "B86001"}},
    "code": [
        {"coding": [{"system": JOB_ROLE_SYSTEM, "code": "R8000"}, {"system": ACTIVITY_CODE_SYSTEM, "code": "B0370"}]}
    ],
}
DELAY = 0.15


class Ehr:
    """Practitioner/p1 and (unless ``roles`` is emptied) PractitionerRole/pr1; includes the Practitioner only
    when ``includes``. Every answer takes DELAY, and the server records when each request came and went."""

    def __init__(self, includes: bool) -> None:
        self.includes, self.roles = includes, [ROLE]
        self.seen: list[tuple[str, dict, float, float]] = []
        ehr = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True

            def do_GET(self):  # noqa: N802
                came = time.monotonic()
                path, query = urlsplit(self.path).path, parse_qs(urlsplit(self.path).query)
                time.sleep(DELAY)
                if path.endswith("/Practitioner/p1"):
                    body = PRACTITIONER
                elif path.endswith("/PractitionerRole/pr1") and ehr.roles:
                    body = ROLE
                elif path.endswith("/PractitionerRole"):
                    wanted = query.get("practitioner") == ["Practitioner/p1"] or query.get("_id") == ["pr1"]
                    roles = ehr.roles if wanted else []
                    entries = [{"resource": r, "search": {"mode": "match"}} for r in roles]
                    if roles and ehr.includes and query.get("_include") == ["PractitionerRole:practitioner"]:
                        entries.append({"resource": PRACTITIONER, "search": {"mode": "include"}})
                    body = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
                else:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                ehr.seen.append((path.rsplit("/fhir", 1)[-1], query, came, time.monotonic()))

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.server_port}/fhir"

    def client(self) -> EhrFhirClient:
        return ehr_client(self.base)

    def resolve(self, fhir_user: str = "Practitioner/p1"):
        self.seen.clear()
        return resolve_identity(self.client(), fhir_user, {"sub": "u"}, issuer=self.base)

    def paths(self) -> list[str]:
        return [p for p, *_ in self.seen]


@pytest.fixture
def including():
    server = Ehr(includes=True)
    yield server
    server.server.shutdown()


@pytest.fixture
def not_including():
    server = Ehr(includes=False)
    yield server
    server.server.shutdown()


# ---- identity in one round trip ----------------------------------------------------------------------------


def test_role_and_practitioner_come_in_one_request(including):
    user = including.resolve()
    assert user.name == "Ada Okafor" and user.activity_codes == ("B0370",) and user.practitioner == "Practitioner/p1"
    ((path, query, *_),) = including.seen
    assert path == "/PractitionerRole" and query["_include"] == ["PractitionerRole:practitioner"]
    assert including.base not in NO_INCLUDE


def test_a_practitioner_role_fhir_user_is_one_request_too(including):
    user = including.resolve("PractitionerRole/pr1")
    assert user.name == "Ada Okafor" and user.activity_codes == ("B0370",)
    ((path, query, *_),) = including.seen
    assert path == "/PractitionerRole" and query["_id"] == ["pr1"]


def test_without_the_include_the_practitioner_is_read_and_later_launches_ask_side_by_side(not_including):
    user = not_including.resolve()
    assert user.name == "Ada Okafor" and user.activity_codes == ("B0370",)
    assert not_including.paths() == ["/PractitionerRole", "/Practitioner/p1"]  # one after the other
    assert not_including.base in NO_INCLUDE
    user = not_including.resolve()
    assert user.name == "Ada Okafor" and user.activity_codes == ("B0370",)
    (read, _, read_came, read_went), (role, role_query, role_came, role_went) = sorted(not_including.seen)
    assert (read, role) == ("/Practitioner/p1", "/PractitionerRole") and "_include" not in role_query
    assert role_came < read_went and read_came < role_went  # side by side: one round trip again


def test_a_user_without_a_role_has_the_practitioner_read_and_the_ehr_is_not_marked(including):
    including.roles = []
    user = including.resolve()
    assert user.name == "Ada Okafor" and user.role_codes == ()
    assert including.paths() == ["/PractitionerRole", "/Practitioner/p1"]
    assert including.base not in NO_INCLUDE  # nothing to include from: says nothing about the EHR


def test_a_practitioner_role_fhir_user_without_the_include_reads_the_practitioner(not_including):
    user = not_including.resolve("PractitionerRole/pr1")
    assert user.name == "Ada Okafor" and user.activity_codes == ("B0370",)
    assert not_including.paths() == ["/PractitionerRole", "/Practitioner/p1"]


# ---- the Patient, read once alongside ---------------------------------------------------------------------


def test_callback_reads_are_taken_once_and_kept_briefly(monkeypatch):
    reads = CallbackReads()
    done: Future = Future()
    done.set_result({"resourceType": "Patient", "id": "x"})
    reads.put("ctx-1", done)
    assert reads.take("ctx-1") is done and reads.take("ctx-1") is None
    reads.put("ctx-2", done)
    monkeypatch.setattr(CallbackReads, "TTL", -1.0)
    assert reads.take("ctx-2") is None  # too old: the gathering reads the Patient itself
    monkeypatch.setattr(CallbackReads, "TTL", 120.0)
    for i in range(CallbackReads.MAX + 10):
        reads.put(f"c{i}", done)
    assert reads.take("c0") is None and reads.take(f"c{CallbackReads.MAX + 9}") is done


@pytest.fixture
def fresh(sandbox):
    """Discovery read afresh (another test may have left an organisation's SMART profile in the cache)."""
    sandbox.viewer_app.extensions["launch"].discovery.clear()
    yield sandbox
    sandbox.viewer_app.extensions["launch"].discovery.clear()


def test_a_launch_reads_its_patient_once_alongside_the_identity_reads(http, fresh):
    sandbox = fresh
    for org in ("gp", "hospital", "community", "council"):
        sandbox.state.set_faults(org, latency_ms=300)
    started = time.time()
    resp = http.get(f"{sandbox.sandbox_url}/ehr/launch", params={"user": "dr-evans", "patient": MARGARET})
    assert resp.status_code == 200 and "Margaret" in resp.text, resp.text[-3000:]
    time.sleep(1.0)
    requests = sandbox_requests(sandbox, started)
    hospital = [r for r in requests if r.org == "hospital"]  # dr-evans launches from the hospital
    reads = [r for r in hospital if r.path.startswith("/Patient/")]
    (role,) = [r for r in hospital if r.path == "/PractitionerRole"]
    assert len(reads) == 1, [r.path for r in reads]  # read once: the gathering used the callback's read
    assert role.query["_id"] and role.query["_include"] == ["PractitionerRole:practitioner"]
    assert not [r for r in hospital if r.path.startswith(("/Practitioner/", "/PractitionerRole/"))]
    assert reads[0].started < role.ended and role.started < reads[0].ended
    assert reads[0].depth == role.depth == 1


def test_a_launch_refused_at_the_callback_leaves_no_patient_read_behind(http, fresh):
    sandbox = fresh
    launch = sandbox.viewer_app.extensions["launch"]
    before = len(launch.callback_reads._reads)
    sandbox.state.set_switch("id_token_wrong_nonce", True)
    resp = http.get(f"{sandbox.sandbox_url}/ehr/launch", params={"user": "dr-patel", "patient": MARGARET})
    assert resp.status_code >= 400
    assert len(launch.callback_reads._reads) <= before
