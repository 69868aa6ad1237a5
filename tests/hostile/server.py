"""A hostile FHIR server for tests: one organisation that answers the viewer's reads badly on purpose.

In-process, stdlib only (``ThreadingHTTPServer``, Nagle off), on 127.0.0.1. It answers the Backend Services
token request with its own token, finds any NHS number it is asked for, and then misbehaves according to
``mode``. Every request it sees is logged with its ``Authorization`` header, so a test can prove which tokens
reached it; :class:`Recorder` is a second server that only records (the "other host" of foreign links).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from app.record.catalogue import CATALOGUE
from core.identifiers import NHS_NUMBER_SYSTEM, ODS_SYSTEM

TOKEN = "hostile-organisation-token"
PATIENT_ID = "h1"
HUGE = 20 * 1024 * 1024  # one "huge" page: 20 MB
CLAIMED_ODS = "RX9"  # "other_practice": the Patient claims to be registered here (Northgate Hospitals)

MODES = (
    "ok",  # two small pages per type: a well-behaved organisation
    "huge",  # 20 MB pages, streamed with no Content-Length
    "huge_declared",  # 20 MB pages with their Content-Length
    "endless",  # 1,000 resources per page, and always a next page (Observations first, the others 0.2 s later)
    "slow",  # the body trickles a few bytes at a time, past any deadline
    "stall",  # headers, then nothing
    "foreign_next",  # next link to another server (the Recorder)
    "lookalike_next",  # next link to 127.0.0.1.evil
    "userinfo_next",  # next link http://127.0.0.1:{port}@127.0.0.1:{recorder}/…
    "backslash_next",  # next link http://127.0.0.1:{recorder}\\@127.0.0.1:{port}/… (parsers disagree)
    "malformed",  # every list answered with a different malformed page
    "other_practice",  # a Patient registered (it claims) at another organisation
)


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    authorization: str | None
    at: float


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request, client_address) -> None:  # the viewer hanging up mid-answer is expected
        pass


class _Logged(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    owner: _Base

    def log_message(self, *args) -> None:  # quiet
        pass

    def _note(self) -> None:
        self.owner.seen.append(Seen(self.command, self.path, self.headers.get("Authorization"), time.time()))

    def send(self, status: int, body: bytes, content_type: str = "application/fhir+json", length: bool = True) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Base:
    handler: type[_Logged]

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        handler = type("Handler", (self.handler,), {"owner": self})
        self._server = _Server(("127.0.0.1", 0), handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _RecorderHandler(_Logged):
    def do_GET(self) -> None:  # noqa: N802
        self._note()
        self.send(200, json.dumps({"resourceType": "Bundle", "type": "searchset", "entry": []}).encode())

    do_POST = do_GET  # noqa: N815


class Recorder(_Base):
    """Another server: it must never be asked anything by the viewer."""

    handler = _RecorderHandler


class _HostileHandler(_Logged):
    owner: Hostile

    def do_POST(self) -> None:  # noqa: N802 - the token endpoint
        self._note()
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = {"access_token": TOKEN, "token_type": "bearer", "expires_in": 3600, "scope": "system/*.rs"}
        self.send(200, json.dumps(body).encode(), "application/json")

    def do_GET(self) -> None:  # noqa: N802
        self._note()
        owner, parts = self.owner, urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        rtype = parts.path.rsplit("/", 1)[-1]
        if rtype == "Patient":
            nhs = query.get("identifier", "|").split("|", 1)[1]
            return self.send(200, json.dumps(bundle([owner.patient(nhs)])).encode())
        try:
            owner.answer(self, rtype, int(query.get("page") or 1))
        except (BrokenPipeError, ConnectionResetError):  # the viewer stopped reading: as it should
            self.close_connection = True


class Hostile(_Base):
    """The hostile organisation; ``base`` is its FHIR base, ``url + "/token"`` its token endpoint."""

    handler = _HostileHandler

    def __init__(self, recorder: Recorder) -> None:
        self.mode = "ok"
        self.recorder = recorder
        self._huge: bytes | None = None
        self._pages: dict[tuple[str, int], bytes] = {}
        super().__init__()
        self.base = f"{self.url}/fhir"

    def patient(self, nhs: str) -> dict:
        practice = CLAIMED_ODS if self.mode == "other_practice" else "NT401"
        return {
            "resourceType": "Patient",
            "id": PATIENT_ID,
            "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": nhs}],
            "name": [{"family": "Hostile", "given": ["Harriet"]}],
            "generalPractitioner": [{"identifier": {"system": ODS_SYSTEM, "value": practice}}],
        }

    def huge_page(self) -> bytes:
        """20 MB of valid-looking JSON, built once."""
        if self._huge is None:
            one = json.dumps(resource("Observation", 0, "x" * 900)).encode()
            count = HUGE // (len(one) + 1)
            self._huge = (
                b'{"resourceType":"Bundle","type":"searchset","entry":['
                + b",".join(b'{"resource":' + one + b"}" for _ in range(count))
                + b"]}"
            )
        return self._huge

    def endless_pages(self, types: list[str], pages: int = 3) -> None:
        """Build the first ``pages`` endless pages of each type before a test measures anything."""
        for rtype in types:
            for page in range(1, pages + 1):
                self.endless_page(rtype, page, f"{self.base}/{rtype}?patient={PATIENT_ID}&page={page + 1}")

    def endless_page(self, rtype: str, page: int, nxt: str) -> bytes:
        """1,000 resources and a next link, built once per (type, page): the server's own time is not the
        viewer's (the test server shares the viewer's process)."""
        key = (rtype, page)
        if key not in self._pages:
            entries = [resource(rtype, (page - 1) * 1000 + i) for i in range(1000)]
            self._pages[key] = json.dumps(bundle(entries, nxt)).encode()
        return self._pages[key]

    def answer(self, h: _Logged, rtype: str, page: int) -> None:
        mode = self.mode
        nxt = f"{self.base}/{rtype}?patient={PATIENT_ID}&page={page + 1}"
        if mode in ("huge", "huge_declared"):
            body = self.huge_page()
            h.send_response(200)
            h.send_header("Content-Type", "application/fhir+json")
            if mode == "huge_declared":
                h.send_header("Content-Length", str(len(body)))
                h.end_headers()
                h.wfile.write(body)
            else:
                h.send_header("Transfer-Encoding", "chunked")
                h.end_headers()
                view, step = memoryview(body), 256 * 1024
                for i in range(0, len(body), step):
                    piece = view[i : i + step]
                    h.wfile.write(b"%x\r\n" % len(piece) + piece.tobytes() + b"\r\n")
                h.wfile.write(b"0\r\n\r\n")
            return
        if mode == "endless":
            if rtype != "Observation":  # the rows a test looks for arrive first, so the cut at
                time.sleep(0.2)  # resources_per_patient never falls before any of them was read
            return h.send(200, self.endless_page(rtype, page, nxt))
        if mode in ("slow", "stall"):
            body = json.dumps(bundle([resource(rtype, 1)])).encode()
            h.send_response(200)
            h.send_header("Content-Type", "application/fhir+json")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            if mode == "stall":
                time.sleep(30)
                return
            for i in range(0, len(body), 4):
                h.wfile.write(body[i : i + 4])
                h.wfile.flush()
                time.sleep(0.1)
            return
        if mode.endswith("_next") and page == 1:
            target = {
                "foreign_next": f"{self.recorder.url}/fhir/{rtype}?page=2",
                "lookalike_next": f"http://127.0.0.1.evil:{self.port}/fhir/{rtype}?page=2",
                "userinfo_next": f"http://127.0.0.1:{self.port}@127.0.0.1:{self.recorder.port}/fhir/{rtype}?page=2",
                "backslash_next": f"http://127.0.0.1:{self.recorder.port}\\@127.0.0.1:{self.port}/fhir/{rtype}?page=2",
            }[mode]
            return h.send(200, json.dumps(bundle([resource(rtype, 1)], target)).encode())
        if mode == "malformed":
            return h.send(200, MALFORMED[hash(rtype) % len(MALFORMED)](rtype))
        # ok, other_practice, and the second page of the *_next modes
        last = page >= 2
        return h.send(200, json.dumps(bundle([resource(rtype, page)], None if last else nxt)).encode())


MALFORMED = (
    lambda rtype: b'{"resourceType": "Bundle", "entry": [{"resource": ',  # cut off
    lambda rtype: b"<html><body>Service Unavailable</body></html>",  # not JSON
    lambda rtype: b'[{"resourceType": "Bundle"}]',  # JSON, not a resource
    lambda rtype: json.dumps({"resourceType": "Bundle", "entry": "everything", "link": "next"}).encode(),
    lambda rtype: json.dumps({"resourceType": "Bundle", "entry": [1, None, {"resource": []}]}).encode(),
    lambda rtype: json.dumps({"resourceType": "Bundle", "link": [{"relation": "next", "url": 42}]}).encode(),
    lambda rtype: json.dumps({"resourceType": "OperationOutcome", "issue": []}).encode(),
    lambda rtype: json.dumps(
        {"resourceType": "Bundle", "entry": [{"resource": {**resource(rtype, 1), "subject": "Patient/h1"}}]}
    ).encode(),
)


def resource(rtype: str, n: int, note: str = "") -> dict:
    """A small resource of ``rtype`` about the hostile server's patient (its patient field depends on the type)."""
    field = CATALOGUE.patient_fields.get(rtype, "subject")
    out = {"resourceType": rtype, "id": f"{rtype[:3].lower()}{n}", field: {"reference": f"Patient/{PATIENT_ID}"}}
    if rtype == "Observation":
        out |= {"status": "final", "code": {"text": f"Hostile test {n} {note}"}, "effectiveDateTime": "2024-01-01"}
    return out


def bundle(resources: list[dict], next_url: str | None = None) -> dict:
    out: dict = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}
    if next_url:
        out["link"] = [{"relation": "next", "url": next_url}]
    return out
