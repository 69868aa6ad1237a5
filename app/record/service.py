"""Gathers one launch's record (fetch + match at every organisation) and merges it into sections.

The gathering for a launch context is started once and kept for a short time (the per-launch record
cache), so every section page, progress poll and export of that launch reuses it. Merging happens once
per withholding rule, after the access decision: what may not be shown never reaches a row.

The cache is bounded by bytes, not by count: the JSON size of the raw resources each gathering keeps
(``SourceResult.bytes``), at most ``[limits] cache_mb`` per process, the oldest launch dropped first; the
newest is always kept (one launch is itself bounded by ``launch_mb``). Parsed resources take about 4.6x
their JSON size in memory, so the default 24 MB is about 110 MB of Python objects: about 8 launches of the
largest sandbox patient (~2.8 MB of JSON, ~12.7 MB in memory each, bench/README.md), which keeps a gunicorn
worker under 250 MB (32 MB did not). When records are dropped, the freed memory is given back to the system
(``release_freed``) and a complete record is frozen out of the collector (``settle``; app/runtime.py).

What one cached record keeps, and all of it is counted in that bound (``Gathering.size``):

- the raw resources, parsed once (the only copy of the clinical data: rows point at these same dicts);
- one merge of everything (``Catalogue.build``, once per set of answered organisations): an Item and a
  SourceRef per resource and a Row per fact, counted as ``merged_bytes`` (their measured memory, in the
  bound's JSON-size units);
- one view per withholding rule, derived from that merge (``merge.without``): lists of the same rows, plus
  fresh rows only for the groups a withheld item was in, counted per view.

The shared snapshot (orjson + zlib of the whole record, for other workers and hosts) is written once the
fetch is complete, by a background thread, never by the request that renders the page; its bytes are
handed to the store and not kept.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from app.config import Config
from app.runtime import release_freed, settle
from core.fhir_client import TokenSource, log_source_reads
from core.http import fetch_executor
from core.names import display_name
from launch.backend import BackendTokens
from launch.context import LaunchContext
from launch.ehr_client import TIMEOUT as EHR_TIMEOUT
from launch.ehr_client import EhrFhirClient
from launch.tokens import TokenManager

from .catalogue import Catalogue
from .fetch import FetchJob, SourceResult, restore, snapshot_of
from .match import Demographics, demographic_warnings, demographics, nhs_number_of
from .merge import Item, Row, Rule, SourceRef, without
from .sources import RecordSource, record_sources

log = logging.getLogger(__name__)
RECORD_TTL = 300  # seconds a fetched record is reused before it is fetched again
# What merging adds to a cached record, in the cache bound's units (JSON bytes; parsed JSON is ~4.4x that in
# memory): an Item and a SourceRef per resource (~330 bytes of memory), a Row with its lists and detail per
# fact (~880). Measured with tracemalloc on the largest Synthea patient: 2.2 MB of memory for 1,806 resources
# next to 5.9 MB for the resources themselves (bench/README.md, "Less CPU and memory per launch").
MERGED_BYTES_PER_ITEM = 80
MERGED_BYTES_PER_ROW = 200
VIEW_BYTES_PER_ROW = 2  # a view's own lists point at the merge's rows
_MERGE = "merge"  # Gathering.merged key of the one merge; the views are keyed by withholding rule


class Withholding(Protocol):
    """What may not be shown (the access decision's rule): applied to raw resources before merging."""

    @property
    def key(self) -> tuple: ...

    def hides(self, ods: str | None, resource: dict) -> bool: ...


@dataclass
class ConsolidatedRecord:
    nhs_number: str | None
    patient: dict
    results: list[SourceResult]
    sections: dict[str, list[Row]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    complete: bool = False
    withheld: int = 0  # items left out (sensitive, or from an organisation the patient objected to)
    kept_bytes: int = 0  # what this view adds to the cached record (Gathering.size)

    def section(self, name: str) -> list[Row]:
        return self.sections.get(name, [])

    @property
    def loaded(self) -> list[SourceResult]:
        return [r for r in self.results if r.usable]

    @property
    def incomplete_sources(self) -> list[SourceResult]:
        """Sources whose data is missing or incomplete: the completeness banner lists every one."""
        return [r for r in self.results if r.state in ("failed", "partial")]

    def incomplete_for(self, *labels: str) -> list[SourceResult]:
        """Sources that may be missing items of these lists (failed ones may be missing anything)."""
        wanted = set(labels)
        return [r for r in self.results if r.missing(wanted)]

    @property
    def waiting(self) -> list[SourceResult]:
        return [r for r in self.results if not r.done]


@dataclass
class Gathering:
    """One launch's record being gathered: the launching EHR's Patient, then every organisation's answer."""

    created: float
    job: FetchJob | None  # None when there is no valid NHS number: nothing is fetched
    patient: dict
    nhs_number: str | None
    # (answered organisations, _MERGE) → the one merge; (answered organisations, withholding key) → a view
    merged: dict[tuple, object] = field(default_factory=dict)
    shared: bool = False  # already in (or read from, or being written to) the shared record cache
    ctx_id: str = ""
    announced: bool = False  # the completed fetch was logged (and its snapshot handed to the writer)
    merging: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def results(self) -> list[SourceResult]:
        return list(self.job.results.values()) if self.job else []

    @property
    def complete(self) -> bool:
        return self.job is None or self.job.all_done()

    @property
    def loaded(self) -> list[SourceResult]:
        return [r for r in self.results if r.usable]

    @property
    def size(self) -> int:
        """Approximate bytes kept: the JSON size of every organisation's raw resources (and the Patient), and
        what the merge and its views add (in the same units)."""
        merged = sum(v.kept_bytes for v in list(self.merged.values()))
        return sum(r.bytes for r in self.results) + 2048 + merged

    @property
    def patient_name(self) -> str | None:
        return display_name(self.patient.get("name"))

    def wait(self, timeout: float) -> bool:
        return self.job.wait(timeout) if self.job else True


class RecordService:
    def __init__(
        self, config: Config, catalogue: Catalogue, tokens: TokenManager, backend: BackendTokens, shared=None
    ) -> None:
        """``shared``: a store with get_bytes/set_bytes (Redis) so any worker or host can reuse a fetch."""
        self.config, self.catalogue, self.tokens, self.backend, self.shared = config, catalogue, tokens, backend, shared
        self._cache: dict[str, Gathering] = {}
        self._trim_due = False  # records were dropped from the cache since the last release_freed()
        self._lock = threading.Lock()
        self._starting: dict[str, Future] = {}
        self._snapshot_pool: ThreadPoolExecutor | None = None
        self._snapshot_pid = 0
        self._snapshots: Future | None = None  # the last snapshot handed to the writer

    def gather_early(self, ctx: LaunchContext, request_id: str, then=None, patient: Future | None = None) -> None:
        """Begin gathering the record while the browser is still following the sign-in redirect.

        ``patient``: the read of the launch's Patient the callback started alongside the identity reads
        (``launch.flow.callback_patient``), so it is not read a second time."""

        def run() -> Gathering:
            entry = self._start_now(ctx, request_id, refresh=False, patient=patient)
            if then is not None:
                then(entry)
            return entry

        with self._lock:
            if ctx.id not in self._starting:
                self._starting[ctx.id] = fetch_executor().submit(run)
            for key in list(self._starting)[:-200]:  # launches never viewed do not accumulate
                self._starting.pop(key, None)

    def gather(self, ctx: LaunchContext, request_id: str, refresh: bool = False) -> Gathering:
        """The launch's fetch, started now or reused from the cache (or from an early start in flight)."""
        with self._lock:
            early = self._starting.pop(ctx.id, None) if not refresh else None
        if early is not None:
            try:
                return early.result(timeout=30)
            except Exception as exc:  # noqa: BLE001 - start again here, so this request reports its own error
                log.info("early start for %s… failed (%s); starting again", ctx.id[:6], exc.__class__.__name__)
        return self._start_now(ctx, request_id, refresh)

    def _start_now(
        self, ctx: LaunchContext, request_id: str, refresh: bool, patient: Future | None = None
    ) -> Gathering:
        with self._lock:
            entry = self._cache.get(ctx.id)
            fresh = entry and (time.time() - entry.created < RECORD_TTL or (entry.job and not entry.job.all_done()))
            if entry and fresh and not refresh:
                return entry
        if not refresh and self.shared is not None:
            snapshot = self._load_snapshot(ctx)
            if snapshot is not None:
                with self._lock:
                    self._cache[ctx.id] = snapshot
                    self._evict()
                return snapshot
        patient = _read_at_callback(patient, ctx)
        if patient is None:
            client = EhrFhirClient(self.tokens, ctx.id, ctx.iss, request_id)
            patient = client.get(f"Patient/{ctx.patient}")  # the launching EHR says who this is
        nhs = nhs_number_of(patient)
        job = None
        if nhs:
            sources = record_sources(self.config, ctx.iss)
            tokens = {s.id: self._token_source(s, ctx) for s in sources}
            known = {s.id: patient for s in sources if s.auth == "user"}  # already read: no second round trip
            job = FetchJob(
                sources,
                nhs,
                tokens,
                request_id,
                known_patients=known,
                types=self.catalogue.fetch_types,
                patient_fields=self.catalogue.patient_fields,
                limits=self.config.limits,
                labels=list_labels(self.catalogue),
            ).start()
        entry = Gathering(time.time(), job, patient, nhs, ctx_id=ctx.id)
        with self._lock:
            self._cache[ctx.id] = entry
            self._evict()
        return entry

    def _evict(self) -> None:
        """Drop expired gatherings, then the oldest until the rest fit ``cache_bytes`` (the newest always stays).

        Called with the lock held, whenever a gathering is added; a gathering still filling counts what it
        holds so far."""
        before = len(self._cache)
        for key in [k for k, e in self._cache.items() if time.time() - e.created > 4 * RECORD_TTL]:
            del self._cache[key]
        total = sum(e.size for e in self._cache.values())
        while len(self._cache) > 1 and total > self.config.limits.cache_bytes:  # oldest first: insertion order
            total -= self._cache.pop(next(iter(self._cache))).size
        self._trim_due = self._trim_due or len(self._cache) < before

    @property
    def cached_bytes(self) -> int:
        with self._lock:
            return sum(e.size for e in self._cache.values())

    def progress(self, gathering: Gathering) -> ConsolidatedRecord:
        """Each organisation's state and nothing clinical: for the loading page and refusals."""
        if gathering.complete:
            self._fetched(gathering)
        return ConsolidatedRecord(
            gathering.nhs_number, gathering.patient, gathering.results, complete=gathering.complete
        )

    def merged(self, gathering: Gathering, withholding: Withholding | None = None) -> ConsolidatedRecord:
        """Every organisation that has answered, without what ``withholding`` hides.

        Merged once per set of answered organisations (``Catalogue.build``, whatever the withholding); each
        withholding rule's view is derived from that one merge (``merge.without``) and cached, so paging, a
        second user, or the same user after breaking the glass costs no second merge.
        """
        if gathering.job is None:
            return ConsolidatedRecord(None, gathering.patient, [], complete=True)
        results = gathering.results
        done = tuple(sorted(r.source.id for r in results if r.done))
        key = (done, withholding.key if withholding else None)
        cached = gathering.merged.get(key)
        if cached is not None:
            return cached
        with gathering.merging:  # concurrent first requests: one merges, the others wait for it
            cached = gathering.merged.get(key)
            if cached is not None:
                return cached
            base = gathering.merged.get((done, _MERGE))
            if base is None:
                base = self._merge(gathering, results, done)
            record = base.view(self.catalogue, withholding)
            with self._lock:
                gathering.merged = {k: v for k, v in gathering.merged.items() if k[0] == done} | {
                    (done, _MERGE): base,
                    key: record,
                }
                if gathering.ctx_id and self._cache.get(gathering.ctx_id) is gathering:
                    self._evict()  # the record grew by its merge (or a view): the bound counts it
        if base.complete:
            self._fetched(gathering)
        return record

    def _merge(self, gathering: Gathering, results: list[SourceResult], done: tuple) -> _Merge:
        """The one merge: every usable organisation's resources, nothing left out."""
        items: dict[str, list[Item]] = {}
        people: list[Demographics] = []
        for result in results:
            if not result.usable:
                continue
            people.append(demographics(result.source.name, result.patient))
            for rtype, resources in result.resources.items():
                into = items.setdefault(rtype, [])
                into.extend(Item(r, _source_ref(result.source, r)) for r in resources)
        sections = self.catalogue.build(items)
        return _Merge(
            gathering,
            results,
            items,
            sections,
            demographic_warnings(people),
            complete=len(done) == len(results),
        )

    # -- after the fetch: one summary line per organisation, and the shared snapshot off the request path --
    def _fetched(self, gathering: Gathering) -> None:
        """The first time a request sees ``gathering`` complete: log what each organisation sent, and hand the
        snapshot to the background writer (the request does not wait for it)."""
        if gathering.announced or gathering.job is None:
            return
        with self._lock:
            if gathering.announced:
                return
            gathering.announced = True
            write = self.shared is not None and not gathering.shared
            gathering.shared = gathering.shared or write  # claimed: written once
        settle()  # the parsed record stays for minutes: out of the collector's walks (app/runtime.py)
        if self._trim_due:  # records were dropped since: give their freed pages back to the system
            self._trim_due = False
            release_freed()
        if not write and self.shared is not None:
            return  # read from the shared cache: the worker that fetched it logged it
        for result in gathering.job.results.values():
            log_source_reads(
                gathering.job.request_id,
                result.source.id,
                result.state,
                requests=result.requests,
                resources=sum(len(v) for v in result.resources.values()),
                received=result.bytes,
                seconds=(result.finished or time.time()) - result.started,
            )
        if write:
            self._snapshots = self._writer().submit(self._save_snapshot, gathering)

    def _writer(self) -> ThreadPoolExecutor:
        """One background thread per process writes snapshots, oldest first (a refresh's lands last)."""
        with self._lock:
            if self._snapshot_pool is None or self._snapshot_pid != os.getpid():  # none survives a fork
                self._snapshot_pool = ThreadPoolExecutor(1, thread_name_prefix="record-snapshot")
                self._snapshot_pid = os.getpid()
            return self._snapshot_pool

    def flush_snapshots(self, timeout: float = 10) -> bool:
        """Wait for the snapshots handed to the writer so far (tests, benchmarks); True when all are written."""
        pending = self._snapshots
        if pending is None:
            return True
        try:
            pending.result(timeout)
        except TimeoutError:
            return False
        except Exception:  # noqa: BLE001 - logged by the writer
            return True
        return True

    # -- the shared record cache (Redis): one fetch per launch, whichever node serves the next page ------
    def _save_snapshot(self, entry: Gathering) -> None:
        """Runs on the writer thread, after the fetch is complete."""
        try:
            data = {
                "created": entry.created,
                "patient": entry.patient,
                "nhs": entry.nhs_number,
                "request_id": entry.job.request_id,
                "results": [snapshot_of(r) for r in entry.job.results.values()],
            }
            ttl = max(int(RECORD_TTL - (time.time() - entry.created)), 1)
            self.shared.set_bytes(f"record:{entry.ctx_id}", zlib.compress(orjson.dumps(data), 1), ttl)
        except Exception as exc:  # noqa: BLE001 - the page was served; another worker just fetches again
            log.warning("record snapshot for %s… not written: %s", entry.ctx_id[:6], exc.__class__.__name__)
            entry.shared = False

    def _load_snapshot(self, ctx: LaunchContext) -> Gathering | None:
        raw = self.shared.get_bytes(f"record:{ctx.id}")
        if not raw:
            return None
        data = orjson.loads(zlib.decompress(raw))
        sources = {s.id: s for s in record_sources(self.config, ctx.iss)}
        job = FetchJob.completed(
            [restore(sources[r["source"]], r) for r in data["results"] if r["source"] in sources],
            data["nhs"],
            data["request_id"],
        )
        return Gathering(data["created"], job, data["patient"], data["nhs"], shared=True, ctx_id=ctx.id)

    def _token_source(self, source: RecordSource, ctx: LaunchContext) -> TokenSource | None:
        if source.auth == "user":
            return TokenSource(
                lambda: self.tokens.access_token(ctx.id), lambda: self.tokens.access_token(ctx.id, force_refresh=True)
            )
        if source.auth == "backend_services" and source.config is not None:

            def renew() -> str:
                self.backend.forget(source.config)
                return self.backend.token_for(source.config)

            return TokenSource(lambda: self.backend.token_for(source.config), renew)
        return None


def _read_at_callback(read: Future | None, ctx: LaunchContext) -> dict | None:
    """The launch's Patient as the callback read it, or None (not read there, failed, or not that Patient):
    then the gathering reads it itself."""
    if read is None:
        return None
    try:
        patient = read.result(timeout=EHR_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - read again below, so the gathering reports its own error
        log.info("the callback's read of the patient for %s… failed (%s)", ctx.id[:6], exc.__class__.__name__)
        return None
    ok = isinstance(patient, dict) and patient.get("resourceType") == "Patient" and patient.get("id") == ctx.patient
    return patient if ok else None


def list_labels(catalogue: Catalogue) -> dict[str, str]:
    """Each fetched resource type's list in plain words ("results", "care plans"), for the completeness banner."""
    return {t: s.list_label for s in catalogue.sections for t in s.resource_types}


def _source_ref(source: RecordSource, resource: dict) -> SourceRef:
    reference = f"{resource.get('resourceType')}/{resource.get('id')}"
    return SourceRef(
        source_id=source.id,
        name=source.name,
        ods=source.ods_code,
        reference=reference,
        url=f"{source.base_url}/{reference}",
        last_updated=(resource.get("meta") or {}).get("lastUpdated"),
    )


class _Merge:
    """The one merge of a gathering (``Catalogue.build`` of everything answered), from which each withholding
    rule's view is derived."""

    def __init__(
        self,
        gathering: Gathering,
        results: list[SourceResult],
        items: dict[str, list[Item]],
        sections: dict[str, list[Row]],
        warnings: list[str],
        complete: bool,
    ) -> None:
        self.nhs_number, self.patient, self.results = gathering.nhs_number, gathering.patient, results
        self.items, self.sections, self.warnings, self.complete = items, sections, warnings, complete
        count = sum(len(v) for v in items.values())
        self.rows = sum(len(v) for v in sections.values())
        self.kept_bytes = count * MERGED_BYTES_PER_ITEM + self.rows * MERGED_BYTES_PER_ROW

    def view(self, catalogue: Catalogue, withholding: Withholding | None) -> ConsolidatedRecord:
        """The record as ``withholding`` allows: the withheld resources never reach a row."""
        hidden: set[int] = set()
        if withholding is not None:
            hidden = {
                id(item.resource)
                for items in self.items.values()
                for item in items
                if withholding.hides(item.source.ods or None, item.resource)
            }
        sections = self.sections
        if hidden:
            sections = {}
            for name, rows in self.sections.items():
                spec = catalogue.get(name)
                derived = without(rows, hidden) if isinstance(spec.build, Rule) else None
                if derived is None:  # a section whose merge is a plain function: merge what is left afresh
                    left = [
                        i for t in spec.resource_types for i in self.items.get(t, []) if id(i.resource) not in hidden
                    ]
                    whole = sum(len(self.items.get(t, [])) for t in spec.resource_types)
                    derived = spec.build(left) if len(left) < whole else rows
                sections[name] = derived
        return ConsolidatedRecord(
            nhs_number=self.nhs_number,
            patient=self.patient,
            results=self.results,
            sections=sections,
            warnings=self.warnings,
            complete=self.complete,
            withheld=len(hidden),
            kept_bytes=VIEW_BYTES_PER_ROW * self.rows if hidden else 0,
        )
