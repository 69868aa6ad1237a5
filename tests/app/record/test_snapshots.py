"""After the fetch: the shared snapshot is written by a background thread (never by the request that renders
the page), once per fetch; one INFO line per organisation says what it sent, and per-GET lines cost nothing
unless DEBUG is on; what merging adds to a cached record is counted in the cache's byte bound."""

from __future__ import annotations

import logging
import threading
import time
import zlib
from types import SimpleNamespace

import orjson
import pytest

from app.access.policy import Withholding
from app.config import LimitSettings
from app.record.catalogue import CATALOGUE
from app.record.service import RecordService
from core import fhir_client
from core.fhir_client import FhirReader
from core.http import Response
from tests.app.record.test_merge_once import ORGS, _gathering, fixture_resources

CONFIG = SimpleNamespace(limits=LimitSettings())


class SlowStore:
    """A shared store whose writes take ``delay`` seconds (Redis far away, or busy)."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.delay, self.fail = delay, fail
        self.data: dict[str, bytes] = {}
        self.writes: list[tuple[str, float]] = []
        self.written = threading.Event()
        self.writer_threads: set[str] = set()

    def get_bytes(self, key: str) -> bytes | None:
        return self.data.get(key)

    def set_bytes(self, key: str, value: bytes, ttl: int) -> None:
        self.writer_threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        if self.fail:
            raise ConnectionError("redis went away")
        self.data[key] = value
        self.writes.append((key, time.monotonic()))
        self.written.set()


def whole_record():
    return _gathering({org: fixture_resources(org) for org in ORGS})


def test_the_page_is_merged_and_returned_before_the_snapshot_is_written():
    store = SlowStore(delay=0.6)
    service = RecordService(CONFIG, CATALOGUE, None, None, shared=store)
    gathering = whole_record()
    started = time.monotonic()
    record = service.merged(gathering, Withholding())
    returned = time.monotonic()
    assert record.complete and record.section("problems")
    assert not store.written.is_set(), "the request waited for the snapshot"
    assert returned - started < 0.6
    assert service.flush_snapshots(10) and store.written.is_set()
    assert store.writer_threads == {"record-snapshot_0"}, "written by the background writer, not the request"
    key, written_at = store.writes[0]
    assert key == "record:ctx-merge-once" and written_at >= returned
    data = orjson.loads(zlib.decompress(store.data[key]))
    assert {r["source"] for r in data["results"]} == set(ORGS)
    assert data["nhs"] == gathering.nhs_number and data["request_id"] == "test-merge-once"
    held = {r["source"]: sum(len(v) for v in r["resources"].values()) for r in data["results"]}
    assert held == {sid: sum(len(v) for v in r.resources.values()) for sid, r in gathering.job.results.items()}


def test_one_snapshot_per_fetch_whoever_looks_and_however_often():
    store = SlowStore(delay=0.05)
    service = RecordService(CONFIG, CATALOGUE, None, None, shared=store)
    gathering = whole_record()
    threads = [
        threading.Thread(target=lambda r=r: service.merged(gathering, r))
        for r in (Withholding(), Withholding(withheld_ods=frozenset({"RX9"}))) * 4
    ]
    threads += [threading.Thread(target=service.progress, args=(gathering,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    service.flush_snapshots(10)
    assert len(store.writes) == 1


def test_nothing_is_written_before_the_fetch_is_complete_nor_for_a_record_read_from_the_store():
    store = SlowStore()
    service = RecordService(CONFIG, CATALOGUE, None, None, shared=store)
    gathering = whole_record()
    gathering.job.results["council"].state = "waiting"
    service.merged(gathering)
    service.progress(gathering)
    assert service.flush_snapshots(5) and store.writes == []
    restored = whole_record()
    restored.shared = True  # as _load_snapshot builds it
    service.merged(restored)
    assert service.flush_snapshots(5) and store.writes == []


def test_a_store_that_fails_does_not_fail_the_page(caplog):
    store = SlowStore(fail=True)
    service = RecordService(CONFIG, CATALOGUE, None, None, shared=store)
    gathering = whole_record()
    with caplog.at_level(logging.WARNING, logger="app.record.service"):
        record = service.merged(gathering)
        service.flush_snapshots(5)
    assert record.complete and record.section("results")
    assert any("not written: ConnectionError" in r.getMessage() for r in caplog.records)
    assert gathering.shared is False  # another worker simply fetches again


# ---- logging: one line per organisation, per-GET lines only at DEBUG -----------------------------------------


def test_one_info_line_per_organisation_when_the_fetch_completes(caplog):
    service = RecordService(CONFIG, CATALOGUE, None, None)
    gathering = whole_record()
    with caplog.at_level(logging.INFO, logger="core.fhir_client"):
        service.merged(gathering)
        service.merged(gathering, Withholding(withheld_ods=frozenset({"RX9"})))
        service.progress(gathering)
    lines = [r for r in caplog.records if r.name == "core.fhir_client"]
    assert sorted(r.args[0] for r in lines) == sorted(ORGS)
    assert all(r.levelno == logging.INFO and r.request_id == "test-merge-once" for r in lines)


class Counted(str):
    """A URL that counts how often it is formatted into a message."""

    formatted = 0

    def __str__(self) -> str:
        Counted.formatted += 1
        return str.__str__(self)


@pytest.fixture
def answers(monkeypatch):
    status = {"value": 200}

    def fake_get(url, **kw):
        return Response(Counted(url), status["value"], {}, b'{"resourceType": "Patient", "id": "1"}')

    monkeypatch.setattr(fhir_client, "http_get", fake_get)
    return status


@pytest.fixture
def records(monkeypatch):
    made: list[logging.LogRecord] = []
    original = fhir_client.log.makeRecord

    def spy(*args, **kwargs):
        record = original(*args, **kwargs)
        made.append(record)
        return record

    monkeypatch.setattr(fhir_client.log, "makeRecord", spy)
    return made


@pytest.fixture
def level():
    before = fhir_client.log.level
    yield fhir_client.log.setLevel
    fhir_client.log.setLevel(before)


def test_a_get_logged_at_a_level_that_is_off_costs_no_record_and_no_formatting(answers, records, level):
    level(logging.INFO)
    Counted.formatted = 0
    reader = FhirReader("http://gp.test/fhir", request_id="rid-1")
    for _ in range(50):
        reader.get("Patient/1")
    assert records == [] and Counted.formatted == 0
    answers["value"] = 500
    with pytest.raises(fhir_client.BadStatus):
        reader.get("Patient/1")
    assert [r.levelno for r in records] == [logging.INFO], "a GET that failed is still an INFO line"


def test_at_debug_every_get_is_a_line_with_its_request_id(answers, records, level):
    level(logging.DEBUG)
    reader = FhirReader("http://gp.test/fhir", request_id="rid-2")
    reader.get("Patient/1")
    assert [(r.levelno, r.request_id) for r in records] == [(logging.DEBUG, "rid-2")]
    assert records[0].getMessage() == "GET http://gp.test/fhir/Patient/1 -> 200 (38 bytes)"


# ---- the byte bound counts what merging adds --------------------------------------------------------------


def test_the_merge_and_its_views_are_counted_in_the_cache_bound():
    service = RecordService(CONFIG, CATALOGUE, None, None)
    gathering = whole_record()
    raw = gathering.size
    service.merged(gathering)
    merged = gathering.size
    items = sum(len(v) for r in gathering.job.results.values() for v in r.resources.values())
    assert merged - raw >= items * 100, "an Item, a SourceRef and a share of a Row per resource"
    service.merged(gathering, Withholding(withheld_ods=frozenset({"RX9"})))
    assert gathering.size > merged, "a view with its own rows is counted too"


def test_a_merge_that_outgrows_the_bound_evicts_the_oldest_record():
    first, second = whole_record(), whole_record()
    first.ctx_id, second.ctx_id = "ctx-1", "ctx-2"
    first.created = second.created = time.time()
    limits = LimitSettings(cache_bytes=first.size + second.size + 1000)
    service = RecordService(SimpleNamespace(limits=limits), CATALOGUE, None, None)
    with service._lock:
        service._cache = {"ctx-1": first, "ctx-2": second}
        service._evict()
    assert set(service._cache) == {"ctx-1", "ctx-2"}
    service.merged(second)  # the newest record grows by its merge: the oldest no longer fits
    assert set(service._cache) == {"ctx-2"}
