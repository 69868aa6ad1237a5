"""Gathers one launch's record (fetch + match at every organisation) and merges it into sections.

The gathering for a launch context is started once and kept for a short time (the per-launch record
cache), so every section page, progress poll and export of that launch reuses it. Merging happens once
per withholding rule, after the access decision: what may not be shown never reaches a row.

The cache is bounded by bytes, not by count: the JSON size of the raw resources each gathering keeps
(``SourceResult.bytes``), at most ``[limits] cache_mb`` per process, the oldest launch dropped first; the
newest is always kept (one launch is itself bounded by ``launch_mb``). Parsed resources take about 4.6x
their JSON size in memory, so the default 32 MB is about 150 MB of Python objects: about 11 launches of the
largest sandbox patient (~2.8 MB of JSON, ~12.7 MB in memory each, bench/README.md), where the old bound
of 20 records allowed 20 whatever their size.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from app.config import Config
from core.fhir_client import TokenSource
from core.http import fetch_executor
from core.names import display_name
from launch.backend import BackendTokens
from launch.context import LaunchContext
from launch.ehr_client import EhrFhirClient
from launch.tokens import TokenManager

from .catalogue import Catalogue
from .fetch import FetchJob, SourceResult, restore, snapshot_of
from .match import Demographics, demographic_warnings, demographics, nhs_number_of
from .merge import Item, Row, SourceRef
from .sources import RecordSource, record_sources

log = logging.getLogger(__name__)
RECORD_TTL = 300  # seconds a fetched record is reused before it is fetched again


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

    def section(self, name: str) -> list[Row]:
        return self.sections.get(name, [])

    @property
    def loaded(self) -> list[SourceResult]:
        return [r for r in self.results if r.usable]

    @property
    def incomplete_sources(self) -> list[SourceResult]:
        """Sources whose data is missing or incomplete: the completeness banner lists every one."""
        return [r for r in self.results if r.state in ("failed", "partial")]

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
    merged: dict[tuple, ConsolidatedRecord] = field(default_factory=dict)
    shared: bool = False  # already in (or read from) the shared record cache
    ctx_id: str = ""

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
        """Approximate bytes kept: the JSON size of every organisation's raw resources (and the Patient)."""
        return sum(r.bytes for r in self.results) + 2048

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
        self._lock = threading.Lock()
        self._starting: dict[str, Future] = {}

    def gather_early(self, ctx: LaunchContext, request_id: str, then=None) -> None:
        """Begin gathering the record while the browser is still following the sign-in redirect."""

        def run() -> Gathering:
            entry = self._start_now(ctx, request_id, refresh=False)
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

    def _start_now(self, ctx: LaunchContext, request_id: str, refresh: bool) -> Gathering:
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
        for key in [k for k, e in self._cache.items() if time.time() - e.created > 4 * RECORD_TTL]:
            del self._cache[key]
        total = sum(e.size for e in self._cache.values())
        while len(self._cache) > 1 and total > self.config.limits.cache_bytes:  # oldest first: insertion order
            total -= self._cache.pop(next(iter(self._cache))).size

    @property
    def cached_bytes(self) -> int:
        with self._lock:
            return sum(e.size for e in self._cache.values())

    def progress(self, gathering: Gathering) -> ConsolidatedRecord:
        """Each organisation's state and nothing clinical: for the loading page and refusals."""
        return ConsolidatedRecord(
            gathering.nhs_number, gathering.patient, gathering.results, complete=gathering.complete
        )

    def merged(self, gathering: Gathering, withholding: Withholding | None = None) -> ConsolidatedRecord:
        """Merge every organisation that has answered, leaving out what ``withholding`` hides.

        Cached per set of answered organisations and withholding rule, so paging costs nothing.
        """
        if gathering.job is None:
            return ConsolidatedRecord(None, gathering.patient, [], complete=True)
        results = gathering.results
        key = (tuple(sorted(r.source.id for r in results if r.done)), withholding.key if withholding else None)
        with self._lock:
            cached = gathering.merged.get(key)
        if cached:
            return cached
        items: dict[str, list[Item]] = {}
        people: list[Demographics] = []
        withheld = 0
        for result in results:
            if not result.usable:
                continue
            people.append(demographics(result.source.name, result.patient))
            ods = result.source.ods_code or None
            for rtype, resources in result.resources.items():
                for r in resources:
                    if withholding and withholding.hides(ods, r):
                        withheld += 1
                        continue
                    items.setdefault(rtype, []).append(Item(r, _source_ref(result.source, r)))
        complete = len(key[0]) == len(results)
        if complete and self.shared is not None and not gathering.shared:
            self._save_snapshot(gathering)
        record = ConsolidatedRecord(
            nhs_number=gathering.nhs_number,
            patient=gathering.patient,
            results=results,
            sections=self.catalogue.build(items),
            warnings=demographic_warnings(people),
            complete=complete,
            withheld=withheld,
        )
        with self._lock:
            gathering.merged = {k: v for k, v in gathering.merged.items() if k[0] == key[0]} | {key: record}
        return record

    # -- the shared record cache (Redis): one fetch per launch, whichever node serves the next page ------
    def _save_snapshot(self, entry: Gathering) -> None:
        data = {
            "created": entry.created,
            "patient": entry.patient,
            "nhs": entry.nhs_number,
            "request_id": entry.job.request_id,
            "results": [snapshot_of(r) for r in entry.job.results.values()],
        }
        ttl = max(int(RECORD_TTL - (time.time() - entry.created)), 1)
        self.shared.set_bytes(f"record:{entry.ctx_id}", zlib.compress(orjson.dumps(data), 1), ttl)
        entry.shared = True

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


def list_labels(catalogue: Catalogue) -> dict[str, str]:
    """Each fetched resource type's list in plain words ("results", "care plans"), for the completeness banner."""
    return {t: (s.label or s.name.replace("_", " ")).lower() for s in catalogue.sections for t in s.resource_types}


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
