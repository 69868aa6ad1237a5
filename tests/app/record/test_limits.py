"""Bounded reads (``[limits]``): pages, lists, one organisation's record, one launch's bytes, the record cache.

FetchJob against the in-process hostile FHIR server (tests/hostile/server.py), no sandbox: each limit cuts
what it should, the source is PARTIAL (never loaded) with plain words naming the lists, and memory stays
near the limits however much the server sends.
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import pytest

from app.config import MB, ConfigError, LimitSettings, load_config
from app.record.catalogue import CATALOGUE
from app.record.fetch import LOADED, PARTIAL, FetchJob, SourceResult, restore, snapshot_of
from app.record.service import Gathering, RecordService, list_labels
from app.record.sources import RecordSource
from sandbox.serve import SANDBOX_CONFIG
from tests.hostile.server import Hostile, Recorder

NHS = "9991000372"


@pytest.fixture(scope="module")
def servers():
    recorder = Recorder()
    hostile = Hostile(recorder)
    yield hostile, recorder
    hostile.close()
    recorder.close()


@pytest.fixture
def hostile(servers):
    server, _ = servers
    server.mode = "ok"
    server.seen.clear()
    yield server
    server.mode = "ok"


def source(server: Hostile, sid: str = "eastgate", timeout: float = 10.0) -> RecordSource:
    return RecordSource(sid, "Eastgate Independent Hospital", "NT401", "acute", server.base, timeout, "none")


def fetch(sources, limits: LimitSettings, types=CATALOGUE.fetch_types) -> FetchJob:
    job = FetchJob(
        sources,
        NHS,
        {},
        "test-request",
        types=types,
        patient_fields=CATALOGUE.patient_fields,
        limits=limits,
        labels=list_labels(CATALOGUE),
    ).start()
    assert job.wait(30), "the fetch never finished"
    return job


# ---- each limit ---------------------------------------------------------------------------------------------


def test_a_well_behaved_source_is_loaded_within_the_limits(hostile):
    job = fetch([source(hostile)], LimitSettings())
    result = job.results["eastgate"]
    assert (result.state, result.reasons) == (LOADED, [])
    assert len(result.resources["Observation"]) == 2 and result.kept == 2 * len(CATALOGUE.fetch_types)
    assert 0 < result.bytes <= job.received


def test_a_list_is_cut_at_resources_per_type_and_the_source_is_partial(hostile):
    hostile.mode = "endless"
    job = fetch([source(hostile)], LimitSettings(resources_per_type=2500), types=("Observation",))
    result = job.results["eastgate"]
    assert result.state == PARTIAL
    assert len(result.resources["Observation"]) == 2500  # what was read before the cut is kept
    assert result.reasons == [
        "sent more than the viewer reads: results were cut at 2,500 items; the rest were not read"
    ]
    assert result.requests == 1 + 3  # the Patient search and three pages: not one page more


def test_one_organisations_record_is_cut_at_resources_per_patient(hostile):
    hostile.mode = "endless"
    limits = LimitSettings(resources_per_type=2000, resources_per_patient=5000)
    result = fetch([source(hostile)], limits).results["eastgate"]
    assert result.state == PARTIAL
    assert result.kept == 5000 == sum(len(v) for v in result.resources.values())
    assert all(len(v) <= 2000 for v in result.resources.values())
    assert any(
        r.startswith("sent more than the viewer reads: its record was cut at 5,000 items in all, so ")
        for r in result.reasons
    ), result.reasons


def test_a_page_over_page_bytes_is_refused_by_its_declared_length(hostile):
    hostile.mode = "huge_declared"
    job = fetch([source(hostile)], LimitSettings(), types=("Observation", "Condition"))
    result = job.results["eastgate"]
    assert result.state == PARTIAL and result.resources == {"Observation": [], "Condition": []}
    assert result.reasons == ["sent more data in one answer than the viewer accepts (16 MB), so it was not read"]
    assert job.received < 64 * 1024  # declared too large: refused before a byte of it was read


def test_the_launchs_bytes_are_shared_equally_so_one_source_cannot_starve_the_others(hostile, servers):
    hostile.mode = "endless"
    limits = LimitSettings(launch_bytes=3 * MB)
    job = fetch(
        [source(hostile, "a"), source(hostile, "b"), source(hostile, "c")], limits, types=("Observation", "Encounter")
    )
    assert job.share == MB
    assert job.received <= limits.launch_bytes  # declared lengths are charged before they are read
    for result in job.results.values():
        assert result.state == PARTIAL
        assert 0 < result.bytes <= MB
        assert any(
            "sent more than the viewer reads from one organisation for one person (1 MB), so " in r
            for r in result.reasons
        ), result.reasons


def test_a_source_over_its_share_leaves_a_well_behaved_one_loaded(hostile):
    """The share is per organisation: a flood from one never cuts another's record."""
    good_server = Hostile(Recorder())
    try:
        limits = LimitSettings(launch_bytes=2 * MB)
        hostile.mode = "endless"
        job = fetch([source(hostile, "flood"), source(good_server, "good")], limits)
        assert job.results["flood"].state == PARTIAL
        assert (job.results["good"].state, job.results["good"].reasons) == (LOADED, [])
    finally:
        good_server.recorder.close()
        good_server.close()


def test_huge_streamed_pages_and_endless_lists_keep_memory_bounded(hostile):
    """20 MB pages with no Content-Length on every list at once (default limits): reading stops at the launch's
    64 MB budget, charged as the bytes arrive; today's reader (64 MB pages, no budget) holds every page whole."""
    hostile.mode = "huge"
    hostile.huge_page()  # built before measuring: the server's own 20 MB is not the viewer's
    tracemalloc.start()
    try:
        started = time.time()
        job = fetch([source(hostile)], LimitSettings())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    result = job.results["eastgate"]
    assert result.state == PARTIAL and result.reasons
    assert job.received <= LimitSettings().launch_bytes
    assert peak < 200 * MB, f"peak {peak / MB:.0f} MB while a source sent 20 MB pages"
    assert time.time() - started < 10


def test_endless_resources_keep_memory_bounded(hostile):
    hostile.mode = "endless"
    limits = LimitSettings(resources_per_type=2000, resources_per_patient=8000)
    tracemalloc.start()
    try:
        job = fetch([source(hostile)], limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    result = job.results["eastgate"]
    assert result.state == PARTIAL and result.kept == 8000
    assert peak < 32 * MB, f"peak {peak / MB:.0f} MB while a source sent endless lists"


# ---- the per-launch record cache is bounded by bytes -----------------------------------------------------------


def gathering(ctx_id: str, size: int, src: RecordSource) -> Gathering:
    result = SourceResult(src, state=LOADED, bytes=size, patient={"id": "p"})
    return Gathering(time.time(), FetchJob.completed([result], NHS, "r"), {}, NHS, ctx_id=ctx_id)


def test_the_record_cache_is_bounded_by_bytes_oldest_first(servers):
    config = load_config(SANDBOX_CONFIG, env={})
    service = RecordService(config, CATALOGUE, tokens=None, backend=None)
    src = source(servers[0])
    limit = config.limits.cache_bytes
    for i in range(10):  # each a fifth of the bound: only the newest five fit
        with service._lock:
            service._cache[f"ctx{i}"] = gathering(f"ctx{i}", limit // 5 - 4096, src)
            service._evict()
    assert list(service._cache) == [f"ctx{i}" for i in range(5, 10)]
    assert service.cached_bytes <= limit
    with service._lock:  # one launch larger than the whole bound: it alone is kept
        service._cache["big"] = gathering("big", 2 * limit, src)
        service._evict()
    assert list(service._cache) == ["big"]


def test_a_snapshot_keeps_the_size_of_what_it_holds(servers):
    src = source(servers[0])
    result = SourceResult(src, state=LOADED, patient={"id": "p"}, resources={"Observation": [{"id": "o1"}]})
    result.bytes = 1234
    assert restore(src, snapshot_of(result)).bytes == 1234
    older = snapshot_of(result)
    del older["bytes"]  # written before sizes were kept: measured again
    assert restore(src, older).bytes == len(b'{"Observation":[{"id":"o1"}]}')


# ---- the [limits] table --------------------------------------------------------------------------------------


def test_limits_defaults_and_the_table(tmp_path: Path):
    assert LimitSettings() == load_config(SANDBOX_CONFIG, env={}).limits
    defaults = LimitSettings()
    assert (defaults.page_bytes, defaults.resources_per_type, defaults.resources_per_patient) == (
        16 * MB,
        10_000,
        50_000,
    )
    assert (defaults.launch_bytes, defaults.cache_bytes) == (100 * MB, 24 * MB)
    text = SANDBOX_CONFIG.read_text(encoding="utf-8")
    path = tmp_path / "scr.toml"
    path.write_text(text + "\n[limits]\npage_mb = 0.5\nresources_per_type = 20\nlaunch_mb = 3\n", encoding="utf-8")
    limits = load_config(path, env={}).limits
    assert (limits.page_bytes, limits.resources_per_type, limits.launch_bytes) == (MB // 2, 20, 3 * MB)
    path.write_text(text + "\n[limits]\nresources_per_type = 0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[limits\] resources_per_type must be at least 1"):
        load_config(path, env={})
