"""Parallel, paged, time-boxed reads from every organisation's FHIR server.

Every GET goes through the one FHIR read client (``core.fhir_client.FhirReader``) on the process's
shared pools (``core.http``: deadline, size limit, one retry of a dropped connection). For each source:
find the patient by NHS number, then search every resource type at once, Observation first (the longest
paging chains start first), with a large ``_count``. ``next`` links are followed only on the source's
own scheme, host and port, never in a loop, and never past the source's deadline. Only GET is ever sent.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from app.observability import SOURCE_LATENCY, SOURCE_OUTCOMES
from core.fhir_client import BadStatus, FhirReader, NotFhir, OutsideBase, TokenSource
from core.http import Malformed, OutboundError, ResponseTooLarge, TimedOut, fetch_executor, same_origin

from .match import matching_patients, patient_search
from .sources import RecordSource

log = logging.getLogger(__name__)

PAGE_SIZE = 1000
MAX_PAGES = 100

# What each state means to a clinician: absence of data is never shown as absence of findings.
LOADED, PARTIAL, NOT_FOUND, FAILED, WAITING = "loaded", "partial", "not-found", "failed", "waiting"


@dataclass
class SourceResult:
    source: RecordSource
    state: str = WAITING
    reasons: list[str] = field(default_factory=list)  # plain words, for the completeness banner
    patient: dict | None = None
    resources: dict[str, list[dict]] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    finished: float | None = None
    requests: int = 0
    dropped: int = 0  # entries that were not about this patient (a server ignoring a search parameter)
    fetched_at: str = ""

    @property
    def done(self) -> bool:
        return self.state != WAITING

    @property
    def usable(self) -> bool:
        return self.state in (LOADED, PARTIAL)


class SourceProblem(Exception):
    """Stops one search (or the whole source) with a plain-words reason."""

    def __init__(self, reason: str, fatal: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.fatal = reason, fatal


class FetchJob:
    """One patient's fetch from every source; sources finish independently and can be watched."""

    def __init__(
        self,
        sources: list[RecordSource],
        nhs_number: str,
        tokens: dict[str, TokenSource],
        request_id: str,
        known_patients: dict[str, dict] | None = None,
        types: tuple[str, ...] = (),
        patient_fields: dict[str, str] | None = None,
    ) -> None:
        self.nhs_number = nhs_number
        self.types = types  # from the record catalogue, longest lists first
        self.patient_fields = patient_fields or {}
        self.known_patients = known_patients or {}  # source id → the Patient the launch already read there
        self.request_id = request_id
        self.tokens = tokens
        self.results = {s.id: SourceResult(s) for s in sources}
        self._lock = threading.Lock()
        self._pending: dict[str, int] = {}
        self._changed = threading.Condition(self._lock)
        self.started = time.time()

    @classmethod
    def completed(cls, results: list[SourceResult], nhs_number: str, request_id: str) -> FetchJob:
        """A finished job rebuilt from the shared record cache (fetched by another worker or host)."""
        job = cls([r.source for r in results], nhs_number, {}, request_id)
        job.results = {r.source.id: r for r in results}
        return job

    # -- running ------------------------------------------------------------------------------------
    def start(self, sequential: bool = False) -> FetchJob:
        """Fan out on the shared pool; ``sequential`` runs every request one after another in this thread
        (only for the benchmark's side-by-side comparison)."""
        self._submit = _inline if sequential else fetch_executor().submit
        for result in self.results.values():
            self._submit(self._run_source, result)
        return self

    def wait(self, timeout: float) -> bool:
        """Block until every source is done or ``timeout`` passes; True when all are done."""
        deadline = time.time() + timeout
        with self._changed:
            while not self.all_done():
                remaining = deadline - time.time()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
        return True

    def all_done(self) -> bool:
        return all(r.done for r in self.results.values())

    def _run_source(self, result: SourceResult) -> None:
        source = result.source
        deadline = result.started + source.timeout
        try:
            token = self._token(source.id)
            known = self.known_patients.get(source.id)
            if known:  # the launching EHR's patient, already read for the launch: no second round trip
                patients = matching_patients([known], self.nhs_number)
            else:
                search = patient_search(self.nhs_number)
                bundle = self._get(result, f"{source.base_url}/Patient", search, deadline, token)
                patients = matching_patients(_entries(bundle), self.nhs_number)
            if not patients:
                self._finish(result, NOT_FOUND)
                return
            if len(patients) > 1:
                self._finish(result, FAILED, "holds more than one record with this NHS number, so none is shown")
                return
            result.patient = patients[0]
        except SourceProblem as problem:
            self._finish(result, FAILED, problem.reason)
            return
        except Exception:  # noqa: BLE001 - one source's bug must not take the record down
            log.exception("request %s: source %s failed", self.request_id, source.id)
            self._finish(result, FAILED, "could not be read because of an unexpected error")
            return
        with self._lock:
            self._pending[source.id] = len(self.types)
        if not self.types:
            self._finish(result, LOADED)
            return
        for rtype in self.types:
            self._submit(self._run_type, result, rtype, deadline, token)

    def _run_type(self, result: SourceResult, rtype: str, deadline: float, token: str | None) -> None:
        problem = None
        try:
            resources = self._search_all(result, rtype, deadline, token)
        except SourceProblem as exc:
            problem, resources = exc.reason, []
        except Exception:  # noqa: BLE001
            log.exception("request %s: %s %s failed", self.request_id, result.source.id, rtype)
            problem, resources = "could not be read completely because of an unexpected error", []
        with self._changed:
            result.resources[rtype] = resources
            if problem and problem not in result.reasons:
                result.reasons.append(problem)
            self._pending[result.source.id] -= 1
            if self._pending[result.source.id] == 0:
                result.state = PARTIAL if result.reasons else LOADED
                result.finished = time.time()
                result.fetched_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(result.finished))
                _observe(result)
                self._changed.notify_all()

    def _finish(self, result: SourceResult, state: str, problem: str | None = None) -> None:
        with self._changed:
            if problem:
                result.reasons.append(problem)
            result.state = state
            result.finished = time.time()
            result.fetched_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(result.finished))
            _observe(result)
            self._changed.notify_all()

    # -- HTTP -------------------------------------------------------------------------------------------
    def _token(self, source_id: str) -> str | None:
        provider = self.tokens.get(source_id)
        if provider is None:
            return None
        try:
            return provider.get()
        except Exception as exc:  # noqa: BLE001 - token failures become a plain-words problem
            log.warning("request %s: no token for %s: %s", self.request_id, source_id, exc)
            raise SourceProblem("refused the Shared Care Record's credentials", fatal=True) from exc

    def _search_all(self, result: SourceResult, rtype: str, deadline: float, token: str | None) -> list[dict]:
        source = result.source
        pid = result.patient["id"]
        url: str | None = f"{source.base_url}/{rtype}"
        params: dict | None = {"patient": pid, "_count": str(PAGE_SIZE)}
        seen: set[str] = set()
        out: list[dict] = []
        for _ in range(MAX_PAGES):
            bundle = self._get(result, url, params, deadline, token)
            for resource in _entries(bundle):
                if resource.get("resourceType") != rtype:
                    continue
                if _about_patient(resource, self.patient_fields.get(rtype, "subject"), pid, source.base_url):
                    out.append(resource)
                else:
                    with self._lock:
                        result.dropped += 1
            next_url = next(
                (link.get("url") for link in bundle.get("link") or [] if link.get("relation") == "next"), None
            )
            if not next_url:
                return out
            if not same_origin(next_url, source.base_url):
                raise SourceProblem("sent a link to another server, which was not followed; its list may be incomplete")
            if next_url in seen or next_url == url:
                raise SourceProblem("kept sending the same page; its list may be incomplete")
            seen.add(next_url)
            url, params = next_url, None
        raise SourceProblem(f"had more than {MAX_PAGES} pages of {rtype}; the rest was not read")

    def _get(
        self,
        result: SourceResult,
        url: str,
        params: dict | None,
        deadline: float,
        token: str | None,
        expect: str = "Bundle",
    ) -> dict:
        """One GET through the shared FHIR reader; its typed failures become plain words."""
        remaining = deadline - time.time()
        if remaining <= 0.01:
            raise SourceProblem("did not respond in time")
        with self._lock:
            result.requests += 1
        source_id = result.source.id
        reader = FhirReader(
            result.source.base_url,
            TokenSource(lambda: token, lambda: self._renew(source_id)),
            self.request_id,
            scope="origin",  # next links stay on the source's origin (the pager checks it first)
            timeout=remaining,
        )
        try:
            return reader.get(url, params, expect=expect, deadline=deadline)
        except TimedOut as exc:
            raise SourceProblem("did not respond in time") from exc
        except BadStatus as exc:
            if exc.status in (401, 403):
                raise SourceProblem("refused access to this patient's record") from exc
            raise SourceProblem(f"returned an error (HTTP {exc.status})") from exc
        except ResponseTooLarge as exc:
            raise SourceProblem("sent more data in one answer than the record can accept, so it was not read") from exc
        except Malformed as exc:
            raise SourceProblem("returned data that could not be read (malformed)") from exc
        except NotFhir as exc:
            raise SourceProblem(f"returned data that could not be read (not a FHIR {expect})") from exc
        except OutsideBase as exc:
            reason = "sent a link to another server, which was not followed; its list may be incomplete"
            raise SourceProblem(reason) from exc
        except OutboundError as exc:  # no connection, or it broke again after the one retry
            raise SourceProblem("could not be reached") from exc

    def _renew(self, source_id: str) -> str | None:
        provider = self.tokens.get(source_id)
        try:
            return provider.renew() if provider else None
        except Exception:  # noqa: BLE001
            return None


def _observe(result: SourceResult) -> None:
    SOURCE_LATENCY.labels(result.source.id).observe((result.finished or time.time()) - result.started)
    SOURCE_OUTCOMES.labels(result.source.id, result.state).inc()


def snapshot_of(result: SourceResult) -> dict:
    """A finished source's result as plain JSON for the shared record cache."""
    return {
        "source": result.source.id,
        "state": result.state,
        "reasons": result.reasons,
        "patient": result.patient,
        "resources": result.resources,
        "fetched_at": result.fetched_at,
        "requests": result.requests,
        "dropped": result.dropped,
        "started": result.started,
        "finished": result.finished,
    }


def restore(source: RecordSource, data: dict) -> SourceResult:
    return SourceResult(
        source=source,
        state=data["state"],
        reasons=data["reasons"],
        patient=data["patient"],
        resources=data["resources"],
        started=data["started"],
        finished=data["finished"],
        requests=data["requests"],
        dropped=data["dropped"],
        fetched_at=data["fetched_at"],
    )


def _inline(fn, *args) -> None:
    fn(*args)


def _entries(bundle: dict) -> list[dict]:
    out = []
    for entry in bundle.get("entry") or []:
        if not isinstance(entry, dict) or (entry.get("search") or {}).get("mode") == "outcome":
            continue
        resource = entry.get("resource")
        if isinstance(resource, dict):
            out.append(resource)
    return out


def _about_patient(resource: dict, patient_field: str, patient_id: str, base_url: str) -> bool:
    """Servers may ignore search parameters: keep only what is really about this patient."""
    ref = ((resource.get(patient_field) or {}).get("reference")) or ""
    return ref in (f"Patient/{patient_id}", f"{base_url}/Patient/{patient_id}")
