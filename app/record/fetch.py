"""Parallel, paged, time-boxed reads from every organisation's FHIR server.

Every GET goes through the one FHIR read client (``core.fhir_client.FhirReader``) on the process's
shared pools (``core.http``: deadline, size limit, one retry of a dropped connection). For each source:
find the patient by NHS number, then search every resource type at once, Observation first (the longest
paging chains start first), with a large ``_count``. ``next`` links are followed only on the source's
own scheme, host and port, never in a loop, and never past the source's deadline. Only GET is ever sent.

Round trips, fewest first: a source's first GETs wait only for its token. Where an organisation's
CapabilityStatement declares the chained search on the patient's identifier (``match.chained_search_types``;
read at most once an hour per organisation, alongside a Patient search, so it adds no round trip; the launch
that reads it searches the usual way), its resource searches go out by
``patient.identifier`` in the same round trip as the Patient search, and what they return is kept only
when it is about the one Patient that search finds; elsewhere they follow the Patient search. A pager asks
for its next page before it filters the one it has.

Reads are bounded (``[limits]``, :class:`app.config.LimitSettings`): one answer is refused past
``page_bytes`` (reading stops there), a list is cut at ``resources_per_type`` items and one organisation's
record at ``resources_per_patient``, and what the launch receives is bounded by ``launch_bytes``, shared
equally by its organisations (so one sending too much cannot starve the others) and charged as the bytes
arrive. A source that was cut is PARTIAL, never LOADED, and its reasons say in plain words which lists were
cut.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field

import orjson

from app.config import LimitSettings
from app.observability import SOURCE_LATENCY, SOURCE_OUTCOMES
from core.fhir_client import BadStatus, FhirReader, NotFhir, OutsideBase, TokenSource
from core.http import (
    BudgetExhausted,
    ByteBudget,
    Malformed,
    OutboundError,
    ResponseTooLarge,
    TimedOut,
    fetch_executor,
    same_origin,
)

from .match import chained_search, chained_search_types, matching_patients, patient_search
from .sources import RecordSource

log = logging.getLogger(__name__)

PAGE_SIZE = 1000
MAX_PAGES = 100

# Why a list was cut (SourceResult.cuts): each becomes one plain-words reason naming the lists.
CUT_TYPE, CUT_PATIENT, CUT_LAUNCH, CUT_PAGES = "type", "patient", "launch", "pages"

# What each state means to a clinician: absence of data is never shown as absence of findings.
LOADED, PARTIAL, NOT_FOUND, FAILED, WAITING = "loaded", "partial", "not-found", "failed", "waiting"

FOREIGN_LINK = "sent a link to another server, which was not followed; its list may be incomplete"

# What an organisation's CapabilityStatement says it chains, kept per FHIR base in this process.
CAPABILITY_TTL = 3600  # seconds a CapabilityStatement read is trusted
CAPABILITY_RETRY = 300  # after a failed read, or a declared chain refused, no chaining for this long
CAPABILITY_WAIT = 3.0  # the most one read of /metadata may take (it travels alongside the Patient search)
CAPABILITY_BYTES = 4 * 1024 * 1024


class _Capabilities:
    """FHIR base → the resource types it searches by ``patient.identifier`` (until an expiry)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[str, tuple[float, frozenset[str]]] = {}

    def get(self, base: str) -> frozenset[str] | None:
        with self._lock:
            found = self._known.get(base)
        return found[1] if found and found[0] > time.time() else None

    def put(self, base: str, types: frozenset[str], ttl: float) -> None:
        with self._lock:
            if len(self._known) >= 512:  # only configured organisations are ever read: this never fills
                self._known.clear()
            self._known[base] = (time.time() + ttl, types)

    def clear(self) -> None:
        with self._lock:
            self._known.clear()


CAPABILITIES = _Capabilities()


def forget_capabilities() -> None:
    """Read every organisation's CapabilityStatement again at its next fetch."""
    CAPABILITIES.clear()


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
    bytes: int = 0  # JSON size of the pages whose resources are kept: what the record cache is bounded by
    kept: int = 0  # resources kept, every list together (bounded by resources_per_patient)
    cuts: dict[str, list[str]] = field(default_factory=dict)  # why → the lists cut for that reason (plain words)
    incomplete: list[str] = field(default_factory=list)  # the lists (plain words) that were cut or failed

    def missing(self, labels: set[str]) -> bool:
        """May this source be missing items of these lists? A failed source may be missing anything."""
        return self.state == FAILED or bool(labels & set(self.incomplete))

    @property
    def done(self) -> bool:
        return self.state != WAITING

    @property
    def usable(self) -> bool:
        return self.state in (LOADED, PARTIAL)


class SourceProblem(Exception):
    """Stops one search (or the whole source) with a plain-words reason."""

    def __init__(self, reason: str, fatal: bool = False, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason, self.fatal, self.status = reason, fatal, status
        self.read: tuple[list[dict], int] = ([], 0)  # what the list had read before it stopped (kept, shown)


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
        limits: LimitSettings | None = None,
        labels: dict[str, str] | None = None,
        chaining: bool = True,
    ) -> None:
        """``labels``: each resource type's list in plain words ("results"), for the reasons; ``chaining``:
        use the chained search where an organisation declares it (off: always find the patient first)."""
        self.nhs_number = nhs_number
        self.types = types  # from the record catalogue, longest lists first
        self.patient_fields = patient_fields or {}
        self.known_patients = known_patients or {}  # source id → the Patient the launch already read there
        self.request_id = request_id
        self.tokens = tokens
        self.limits = limits or LimitSettings()
        self.labels = labels or {}
        self.chaining = chaining
        self.results = {s.id: SourceResult(s) for s in sources}
        # launch_bytes, shared equally: a source sending too much is cut at its share, the others are untouched
        self.share = self.limits.launch_bytes // max(len(sources), 1)
        self.budgets = {s.id: ByteBudget(self.share) for s in sources}
        self._lock = threading.Lock()
        self._pending: dict[str, int] = {}  # source id → its parts still running (finding the patient, lists)
        self._settled: dict[str, tuple[str, str | None]] = {}  # source id → its state once those parts end
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
        """Find the patient, then read every list. The lists a source chains go out with the Patient search."""
        source = result.source
        deadline = result.started + source.timeout
        known = self.known_patients.get(source.id)
        gate = _PatientGate()
        with self._lock:
            self._pending[source.id] = 1  # finding the patient; each list adds itself when it starts
        plain = list(self.types)
        learning: _Ahead | None = None  # the source's CapabilityStatement, being read for the launches to come

        def settle(state: str, reason: str | None = None) -> None:
            if learning is not None:
                learning.result()  # never fails; a source is done only when none of its requests is out
            self._end(result, gate, state, reason)

        try:
            token = self._token(source.id)
            if known is None and self.chaining and self.types and self._submit is not _inline:
                chained = CAPABILITIES.get(source.base_url)
                if chained is None:  # not known yet: read alongside the Patient search (no round trip added)
                    learning = _Ahead(self._submit, self._read_capabilities, source, deadline, token)
                else:
                    plain = [t for t in self.types if t not in chained]
                    for rtype in self.types:
                        if rtype in chained:  # in the same round trip as the Patient search
                            self._start_list(result, rtype, deadline, token, gate, True)
            if known:  # the launching EHR's patient, already read for the launch: no second round trip
                patients = matching_patients([known], self.nhs_number)
            else:
                search = patient_search(self.nhs_number)
                bundle = self._get(result, f"{source.base_url}/Patient", search, deadline, token)
                patients = matching_patients(_entries(bundle), self.nhs_number)
            if not patients:
                settle(NOT_FOUND)
                return
            if len(patients) > 1:
                settle(FAILED, "holds more than one record with this NHS number, so none is shown")
                return
            result.patient = patients[0]
        except SourceProblem as problem:
            settle(FAILED, problem.reason)
            return
        except Exception:  # noqa: BLE001 - one source's bug must not take the record down
            log.exception("request %s: source %s failed", self.request_id, source.id)
            settle(FAILED, "could not be read because of an unexpected error")
            return
        gate.open(str(result.patient.get("id")))
        for rtype in plain:
            self._start_list(result, rtype, deadline, token, gate, False)
        if learning is not None:
            learning.result()
        self._list_done(result)  # finding the patient was one of the source's pending parts

    def _start_list(
        self, result: SourceResult, rtype: str, deadline: float, token: str | None, gate: _PatientGate, chained: bool
    ) -> None:
        with self._lock:
            self._pending[result.source.id] += 1
        self._submit(self._run_type, result, rtype, deadline, token, gate, chained)

    def _read_capabilities(self, source: RecordSource, deadline: float, token: str | None) -> frozenset[str]:
        """Read the source's CapabilityStatement (what it chains) into ``CAPABILITIES``; never raises: any
        failure means no chaining for a while. The source's own token goes with it (the server's base)."""
        until = min(deadline, time.time() + CAPABILITY_WAIT)
        try:
            reader = FhirReader(
                source.base_url,
                TokenSource(lambda: token, lambda: None),
                self.request_id,
                timeout=max(until - time.time(), 0.01),
                max_bytes=CAPABILITY_BYTES,
            )
            types = chained_search_types(reader.get("metadata", expect="CapabilityStatement", deadline=until))
        except Exception as exc:  # noqa: BLE001 - without the statement the source is read the usual way
            log.info("request %s: no CapabilityStatement from %s (%s)", self.request_id, source.id, exc)
            CAPABILITIES.put(source.base_url, frozenset(), CAPABILITY_RETRY)
            return frozenset()
        CAPABILITIES.put(source.base_url, types, CAPABILITY_TTL)
        return types

    def _run_type(
        self, result: SourceResult, rtype: str, deadline: float, token: str | None, gate: _PatientGate, chained: bool
    ) -> None:
        problem, size, resources = None, 0, []
        try:
            try:
                resources, size = self._search_all(result, rtype, deadline, token, gate, chained)
            except SourceProblem as exc:
                if not (chained and exc.status == 400):
                    raise
                # The chain was declared but refused: search by the patient's id once it is known, and stop
                # chaining at this organisation for a while.
                log.info("request %s: %s refused patient.identifier on %s", self.request_id, result.source.id, rtype)
                CAPABILITIES.put(result.source.base_url, frozenset(), CAPABILITY_RETRY)
                resources, size = self._search_all(result, rtype, deadline, token, gate, False)
        except SourceProblem as exc:  # a later page failed: the pages read before it are kept, with the reason
            problem, (resources, size) = exc.reason, exc.read
        except Exception:  # noqa: BLE001
            log.exception("request %s: %s %s failed", self.request_id, result.source.id, rtype)
            problem, resources = "could not be read completely because of an unexpected error", []
        self._list_done(result, rtype, resources, size, problem)

    def _list_done(
        self,
        result: SourceResult,
        rtype: str | None = None,
        resources: list[dict] | None = None,
        size: int = 0,
        problem: str | None = None,
    ) -> None:
        """One of the source's pending parts is over (a list, or finding the patient); the last one settles
        the source's state, so a source is done only when none of its requests is still out. Nothing is kept
        from a source settled without a patient (not found there, or failed)."""
        sid = result.source.id
        with self._changed:
            settled = self._settled.get(sid)
            if rtype is not None and settled is None:
                result.resources[rtype] = resources or []
                result.bytes += size
                if problem and problem not in result.reasons:
                    result.reasons.append(problem)
                label = self.labels.get(rtype, rtype)
                if problem and label not in result.incomplete:
                    result.incomplete.append(label)
            self._pending[sid] -= 1
            if self._pending[sid] > 0:
                return
        if settled is not None:
            self._finish(result, *settled)
            return
        with self._changed:
            result.reasons.extend(self._cut_reasons(result))
            result.state = PARTIAL if result.reasons else LOADED
            result.finished = time.time()
            result.fetched_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(result.finished))
            _observe(result)
            self._changed.notify_all()

    def _end(self, result: SourceResult, gate: _PatientGate, state: str, problem: str | None = None) -> None:
        """The source is settled without a patient: lists already searching by the chain stop after the page
        in flight and keep nothing; the source is done when they have stopped."""
        with self._lock:
            self._settled[result.source.id] = (state, problem)
        gate.close()
        self._list_done(result)

    def _cut_reasons(self, result: SourceResult) -> list[str]:
        """One plain-words reason per kind of cut, naming the lists it cut."""
        limits, out = self.limits, []
        for why, labels in result.cuts.items():
            names = sorted(set(labels))
            lists = _and(names)
            if why == CUT_TYPE:
                each = " each" if len(names) > 1 else ""
                out.append(
                    f"sent more than the viewer reads: {lists} were cut at {limits.resources_per_type:,} items"
                    f"{each}; the rest were not read"
                )
            elif why == CUT_PATIENT:
                out.append(
                    f"sent more than the viewer reads: its record was cut at {limits.resources_per_patient:,} "
                    f"items in all, so {lists} may be missing items; the rest were not read"
                )
            elif why == CUT_LAUNCH:
                out.append(
                    f"sent more than the viewer reads from one organisation for one person ({_mb(self.share)}), "
                    f"so {lists} may be missing items; the rest were not read"
                )
            elif why == CUT_PAGES:
                out.append(f"sent {lists} in more than {MAX_PAGES} pages; the rest were not read")
        return out

    def _finish(self, result: SourceResult, state: str, problem: str | None = None) -> None:
        with self._changed:
            if problem and problem not in result.reasons:
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

    def _search_all(
        self, result: SourceResult, rtype: str, deadline: float, token: str | None, gate: _PatientGate, chained: bool
    ) -> tuple[list[dict], int]:
        """The list of ``rtype`` for this patient, and the JSON size of the pages it came in.

        ``chained``: searched by ``patient.identifier`` before the patient's id here is known; each page is
        filtered only once the Patient search has found the one patient (nothing is kept if it does not).
        The next page is asked for before the current one is filtered. Cut (not failed) at the limits: what
        was read is kept and the cut is recorded in ``result.cuts``."""
        source = result.source
        pid: str | None = None
        if chained:
            params: dict | None = {**chained_search(self.nhs_number), "_count": str(PAGE_SIZE)}
        else:
            pid = gate.wait(deadline)
            if pid is None:
                return [], 0
            params = {"patient": pid, "_count": str(PAGE_SIZE)}
        url: str = f"{source.base_url}/{rtype}"
        seen: set[str] = set()
        out: list[dict] = []
        size = 0
        label = self.labels.get(rtype, rtype)
        per_type = self.limits.resources_per_type
        patient_field = self.patient_fields.get(rtype, "subject")
        ahead: _Ahead | None = None
        try:
            for _ in range(MAX_PAGES):
                try:
                    if ahead is not None:
                        bundle, received = ahead.result()
                    else:
                        bundle, received = self._get(result, url, params, deadline, token, budgeted=True)
                except _LaunchSpent:
                    self._cut(result, CUT_LAUNCH, label)
                    return out, size
                ahead = None
                size += received
                next_url = _next_link(bundle)
                link_problem = None
                if next_url:
                    if not same_origin(next_url, source.base_url):
                        link_problem = FOREIGN_LINK
                    elif next_url in seen or next_url == url:
                        link_problem = "kept sending the same page; its list may be incomplete"
                    elif len(out) < per_type:  # ask now: the next page travels while this one is filtered
                        seen.add(next_url)
                        ahead = _Ahead(self._submit, self._get, result, next_url, None, deadline, token, "Bundle", True)
                if pid is None:
                    pid = gate.wait(deadline)
                    if pid is None:  # the patient is not here (or the source failed): keep nothing
                        return [], 0
                for resource in _entries(bundle):
                    if resource.get("resourceType") != rtype:
                        continue
                    if not _about_patient(resource, patient_field, pid, source.base_url):
                        with self._lock:
                            result.dropped += 1
                        continue
                    if len(out) >= per_type:
                        self._cut(result, CUT_TYPE, label)
                        return out, size
                    if not self._take_one(result):
                        self._cut(result, CUT_PATIENT, label)
                        return out, size
                    out.append(resource)
                if not next_url:
                    return out, size
                if len(out) >= per_type:  # full, and the server says there is more
                    self._cut(result, CUT_TYPE, label)
                    return out, size
                if link_problem:
                    raise SourceProblem(link_problem)
                url, params = next_url, None
            self._cut(result, CUT_PAGES, label)
            return out, size
        except SourceProblem as exc:
            if not exc.fatal:
                exc.read = (out, size)
            raise
        finally:
            if ahead is not None:  # not needed after all (cut, or a problem): taken back, or its answer ignored
                ahead.discard()

    def _take_one(self, result: SourceResult) -> bool:
        with self._lock:
            if result.kept >= self.limits.resources_per_patient:
                return False
            result.kept += 1
            return True

    def _cut(self, result: SourceResult, why: str, label: str) -> None:
        with self._lock:
            result.cuts.setdefault(why, []).append(label)
            if label not in result.incomplete:
                result.incomplete.append(label)

    def _get(
        self,
        result: SourceResult,
        url: str,
        params: dict | None,
        deadline: float,
        token: str | None,
        expect: str = "Bundle",
        budgeted: bool = False,
    ):
        """One GET through the shared FHIR reader; its typed failures become plain words.

        Returns the resource, or with ``budgeted`` (the pager) the resource and its body's size, raising
        :class:`_LaunchSpent` when the source's share of the launch's bytes runs out (the pager keeps what it
        read)."""
        remaining = deadline - time.time()
        if remaining <= 0.01:
            raise SourceProblem("did not respond in time")
        budget = self.budgets[result.source.id]
        if budget.left <= 0:
            if budgeted:
                raise _LaunchSpent
            raise SourceProblem(self._spent_reason())
        with self._lock:
            result.requests += 1
        source_id = result.source.id
        reader = FhirReader(
            result.source.base_url,
            TokenSource(lambda: token, lambda: self._renew(source_id)),
            self.request_id,
            scope="origin",  # next links stay on the source's origin (the pager checks it first)
            timeout=remaining,
            max_bytes=self.limits.page_bytes,
            budget=budget,
        )
        try:
            resource = reader.get(url, params, expect=expect, deadline=deadline)
        except TimedOut as exc:
            raise SourceProblem("did not respond in time") from exc
        except BadStatus as exc:
            if exc.status in (401, 403):
                raise SourceProblem("refused access to this patient's record", status=exc.status) from exc
            raise SourceProblem(f"returned an error (HTTP {exc.status})", status=exc.status) from exc
        except BudgetExhausted as exc:
            if budgeted:
                raise _LaunchSpent from exc
            raise SourceProblem(self._spent_reason()) from exc
        except ResponseTooLarge as exc:
            raise SourceProblem(
                f"sent more data in one answer than the viewer accepts ({_mb(self.limits.page_bytes)}), "
                "so it was not read"
            ) from exc
        except Malformed as exc:
            raise SourceProblem("returned data that could not be read (malformed)") from exc
        except NotFhir as exc:
            raise SourceProblem(f"returned data that could not be read (not a FHIR {expect})") from exc
        except OutsideBase as exc:
            raise SourceProblem(FOREIGN_LINK) from exc
        except OutboundError as exc:  # no connection, or it broke again after the one retry
            raise SourceProblem("could not be reached") from exc
        return (resource, reader.received) if budgeted else resource

    @property
    def received(self) -> int:
        """Bytes received from every organisation of the launch (at most ``launch_bytes``)."""
        return sum(b.used for b in self.budgets.values())

    def _spent_reason(self) -> str:
        return (
            f"sent more than the viewer reads from one organisation for one person ({_mb(self.share)}), "
            "so it was not read"
        )

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
        "bytes": result.bytes,
        "incomplete": result.incomplete,
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
        bytes=data.get("bytes") or len(orjson.dumps(data["resources"])),
        incomplete=list(data.get("incomplete") or []),
    )


def _inline(fn, *args) -> None:
    fn(*args)


class _Ahead:
    """A call (a GET) started before its answer is needed, on the shared pool.

    Never waited for while still queued: if the pool has not started it when its answer is needed, it is
    taken back and run in the caller's thread, so callers waiting on the pool they run on cannot deadlock
    it. In the sequential mode (``_inline``) it runs when its answer is needed."""

    def __init__(self, submit, fn, *args) -> None:
        self._fn, self._args = fn, args
        self._future = None if submit is _inline else submit(fn, *args)

    def result(self):
        if self._future is None or self._future.cancel():
            return self._fn(*self._args)
        return self._future.result()

    def discard(self) -> None:
        """Not needed after all: taken back if it has not started, else waited for (so a finished fetch has
        no request still out) and its answer or failure ignored."""
        if self._future is not None and not self._future.cancel():
            with contextlib.suppress(Exception):
                self._future.result()


class _PatientGate:
    """The patient's id at one source, once the Patient search has found exactly one (None: not found)."""

    def __init__(self) -> None:
        self._settled = threading.Event()
        self._patient_id: str | None = None

    def open(self, patient_id: str) -> None:
        self._patient_id = patient_id
        self._settled.set()

    def close(self) -> None:
        self._settled.set()

    def wait(self, deadline: float) -> str | None:
        if not self._settled.wait(max(deadline - time.time(), 0)):
            raise SourceProblem("did not respond in time")
        return self._patient_id


def _entries(bundle: dict) -> list[dict]:
    """The resources of a searchset page; anything not shaped like one is skipped, never trusted."""
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return []
    out = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        search = entry.get("search")
        if isinstance(search, dict) and search.get("mode") == "outcome":
            continue
        resource = entry.get("resource")
        if isinstance(resource, dict):
            out.append(resource)
    return out


def _next_link(bundle: dict) -> str | None:
    links = bundle.get("link")
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, dict) and link.get("relation") == "next":
            url = link.get("url")
            if not isinstance(url, str):
                raise SourceProblem("returned data that could not be read (malformed)")
            return url or None
    return None


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.3g} MB"


class _LaunchSpent(Exception):
    """Internal: the source's share of the launch's bytes ran out during a pager's read."""


def _about_patient(resource: dict, patient_field: str, patient_id: str, base_url: str) -> bool:
    """Servers may ignore search parameters: keep only what is really about this patient."""
    field_value = resource.get(patient_field)
    ref = field_value.get("reference") if isinstance(field_value, dict) else None
    return ref in (f"Patient/{patient_id}", f"{base_url}/Patient/{patient_id}")
