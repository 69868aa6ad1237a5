"""Record benchmark: launch-to-summary against the floor and the sequential fetch, render time, memory.

Run from the repository root::

    .venv/bin/python -m bench.record_bench [--rounds 7] [--latency-ms 50] [--render-repeats 15]

Starts the sandbox's FHIR and authorisation servers in their own process (``python -m sandbox.serve --only
sandbox``), as in production where they are other machines, and the viewer in this process (the bench needs
its record service), both on free loopback ports with the TCP_NODELAY handler. Injects latency on every
organisation and measures:

1. the record fetch for a launched context (a fresh ``FetchJob`` built exactly as ``RecordService.gather``
   builds it, with warm token caches and the launch's Patient passed in), in parallel and sequentially,
   interleaved, against the physical floor computed from the data (slowest source's chain of round trips ×
   measured RTT; the data is loaded here too, for sizing only, and frozen out of the GC);
2. server time to render the largest patient's summary and results pages once the data has arrived;
3. peak resident memory of a viewer worker (run in a subprocess, so the sizing copy of the data is not
   counted).

Prints a table and writes ``bench/results.json``. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import gc
import json
import logging
import math
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import requests
from flask import Flask
from werkzeug.serving import make_server

from app import create_app
from app.config import load_config
from app.record.catalogue import CATALOGUE
from app.record.fetch import PAGE_SIZE, FetchJob
from app.record.sources import record_sources
from app.services import services
from core.http import http_pool
from sandbox.dataset import load_dataset
from sandbox.fhir_server import MAX_COUNT
from sandbox.serve import SANDBOX_CONFIG, NoDelayHandler
from sandbox.settings import sandbox_settings

ROOT = Path(__file__).resolve().parent.parent
FETCH_TYPES = CATALOGUE.fetch_types
RESULTS = ROOT / "bench" / "results.json"
SYNTHEA_DIR = Path(os.environ.get("SCR_SYNTHEA_DIR") or ROOT.parent / "shared" / "data" / "synthea")
ORGS = ("gp", "hospital", "community", "council")
USER = "dr-patel"  # a GP: the launching EHR is the gp server, read with the user's token
SECTION_PAGES = (
    "problems",
    "medications",
    "allergies",
    "immunisations",
    "procedures",
    "encounters",
    "results",
    "documents",
    "care",
)
EXTRA_LAUNCHES = 5
SANDBOX_START_TIMEOUT_S = 180
TARGETS = {"parallel_over_floor": 1.25, "sequential_over_parallel": 8.0, "render_ms": 300.0, "worker_rss_mb": 250.0}


# ---- small helpers -----------------------------------------------------------------------------------


def p95(values: list[float]) -> float:
    """95th percentile, linear interpolation between closest ranks (with 7 samples: near the maximum)."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=20, method="inclusive")[18]


def summarise(values: list[float]) -> dict:
    return {
        "n": len(values),
        "median": round(statistics.median(values), 1),
        "p95": round(p95(values), 1),
        "min": round(min(values), 1),
        "max": round(max(values), 1),
        "samples": [round(v, 1) for v in values],
    }


def proc_cpu_ms(pid: int) -> float:
    """User + system CPU time of another process (from /proc/<pid>/stat; clock-tick resolution, 10 ms)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid: int | str = "self") -> dict[str, float]:
    """VmRSS / VmHWM (peak RSS) in MB from /proc/<pid>/status."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


class LoopbackCookieJar(requests.cookies.RequestsCookieJar):
    """Send ``Secure`` cookies to 127.0.0.1 over http, as browsers do for loopback (pitfall C3)."""

    def __iter__(self):
        for cookie in super().__iter__():
            if cookie.secure and cookie.domain in ("127.0.0.1", "localhost", "localhost.local"):
                cookie = copy.copy(cookie)
                cookie.secure = False
            yield cookie


def new_http() -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.cookies = LoopbackCookieJar()
    return session


def _bind(port: int = 0):
    return make_server("127.0.0.1", port, Flask("placeholder"), threaded=True, request_handler=NoDelayHandler)


def _quiet_logs() -> None:
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no per-request lines on stderr


class GcMonitor:
    """Counts and times the cyclic garbage collector's passes (gen 2 pauses grow with the whole heap)."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._t0 = 0.0
        gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.pauses.append((info["generation"], (time.perf_counter() - self._t0) * 1000))

    def mark(self) -> int:
        return len(self.pauses)

    def since(self, mark: int) -> dict:
        gen2 = [ms for gen, ms in self.pauses[mark:] if gen == 2]
        young = [ms for gen, ms in self.pauses[mark:] if gen < 2]
        return {
            "gen2_count": len(gen2),
            "gen2_total_ms": round(sum(gen2), 1),
            "gen2_max_ms": round(max(gen2, default=0), 1),
            "gen01_total_ms": round(sum(young), 1),
        }


class MeteredFetchJob(FetchJob):
    """Diagnostic only: thread CPU time of the viewer's HTTP GET + JSON parse, summed over the pool."""

    cpu_ms = 0.0
    _meter_lock = threading.Lock()

    def _get(self, *args, **kwargs):
        t0 = time.thread_time()
        try:
            return super()._get(*args, **kwargs)
        finally:
            with MeteredFetchJob._meter_lock:
                MeteredFetchJob.cpu_ms += (time.thread_time() - t0) * 1000


# ---- the running sandbox + viewer ---------------------------------------------------------------------


class Harness:
    """The viewer on a threaded HTTP server in this process; the sandbox in its own process."""

    def __init__(self, tmp: Path) -> None:
        self.rss = {"start": proc_status()}
        self.viewer_srv = _bind()
        self.env = {
            "SCR_CONFIG": str(SANDBOX_CONFIG),
            "SANDBOX_URL": f"http://127.0.0.1:{free_port()}",
            "VIEWER_URL": f"http://127.0.0.1:{self.viewer_srv.server_port}",
            "SCR_KEYS_FILE": str(tmp / "viewer.jwks.json"),  # written by the viewer, read by the sandbox
            "SCR_AUDIT_SQLITE": str(tmp / "audit.sqlite3"),
            "SCR_SYNTHEA_DIR": str(SYNTHEA_DIR),
        }
        self.config = load_config(SANDBOX_CONFIG, env=self.env)
        self.viewer_app = create_app(self.config)
        self.rss["viewer_created"] = proc_status()
        self.sandbox_log = tmp / "sandbox.log"
        self._log = self.sandbox_log.open("w")
        self.sandbox_proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "sandbox.serve", "--only", "sandbox"],
            cwd=ROOT,
            env={**os.environ, **self.env, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        # Sizing only (patients, floor): the same data the sandbox loads, loaded while it loads.
        try:
            self.dataset = load_dataset(sandbox_settings(self.config))
        except BaseException:
            self.stop()
            raise
        self.rss["sizing_dataset_loaded"] = proc_status()
        self._wait_for_sandbox()
        self.viewer_srv.app = self.viewer_app
        threading.Thread(target=self.viewer_srv.serve_forever, daemon=True).start()
        self.sandbox_url, self.viewer_url = self.env["SANDBOX_URL"], self.env["VIEWER_URL"]
        self.sandbox_rss = {"ready": proc_status(self.sandbox_proc.pid)}

    def _wait_for_sandbox(self) -> None:
        deadline = time.monotonic() + SANDBOX_START_TIMEOUT_S
        while time.monotonic() < deadline:
            line = self.sandbox_proc.stdout.readline()
            if not line:
                break
            if "Press Ctrl+C" in line:
                # keep draining its stdout so it can never block on a full pipe
                threading.Thread(target=self.sandbox_proc.stdout.read, daemon=True).start()
                return
        self.stop()
        raise RuntimeError(f"sandbox did not start; its log:\n{self.sandbox_log.read_text()[-3000:]}")

    def sandbox_cpu_ms(self) -> float:
        return proc_cpu_ms(self.sandbox_proc.pid)

    def sandbox_requests(self, request_id: str) -> list[dict]:
        """The sandbox's FHIR request log (``/inspector/api/requests``) for one X-Request-Id."""
        with new_http() as http:
            resp = http.get(f"{self.sandbox_url}/inspector/api/requests", timeout=30)
            resp.raise_for_status()
        return [r for r in resp.json() if r["request_id"] == request_id]

    @property
    def service(self):
        return services(self.viewer_app).record

    def set_latency(self, ms: int) -> None:
        with new_http() as http:
            for org in ORGS:
                http.post(f"{self.sandbox_url}/admin/faults/{org}", json={"latency_ms": ms}).raise_for_status()

    def launch(self, http: requests.Session, nhs: str) -> str:
        """Scripted EHR launch as dr-patel; follows the redirects to ``/r/<ctx>/``; returns the context id."""
        resp = http.get(f"{self.sandbox_url}/ehr/launch", params={"user": USER, "patient": nhs}, timeout=60)
        resp.raise_for_status()
        found = re.search(r"/r/([^/]+)/$", resp.url)
        if not found:
            raise RuntimeError(f"launch of {nhs} did not reach the record: {resp.url}")
        return found.group(1)

    def stop_viewer(self) -> None:
        self.viewer_srv.shutdown()
        self.viewer_srv.server_close()

    def stop(self) -> int | None:
        """SIGTERM the sandbox (``serve`` shuts its servers down and exits 0); its exit code."""
        proc = self.sandbox_proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._log.close()
        return proc.returncode


# ---- 1. launch-to-summary ----------------------------------------------------------------------------


def pick_patients(dataset) -> tuple[dict, dict[str, int]]:
    """Median-size patient (all sandbox patients) and the Synthea patient with the most resources."""

    def size(person) -> int:
        return sum(len(dataset.stores[org].patient_resources(pid)) for org, pid in person.ids.items())

    ranked = sorted(dataset.patients.values(), key=lambda p: (size(p), p.nhs_number))
    synthea = [p for p in ranked if p.origin == "synthea"]
    if not synthea:
        raise SystemExit(f"no Synthea patients loaded from {SYNTHEA_DIR}: the largest-patient case needs them")
    return {"median": ranked[len(ranked) // 2], "largest": synthea[-1]}, {p.nhs_number: size(p) for p in ranked}


def fetch_plan(dataset, person, known: set[str]) -> dict:
    """Requests per source and the longest chain of sequential round trips, from the data itself.

    As ``FetchJob._run_source``: a source in ``known`` (the launching EHR, whose Patient the launch already
    read) goes straight to its searches; every other source first searches Patient by NHS number.
    """
    page = min(PAGE_SIZE, MAX_COUNT)  # the server caps _count
    per_source = {}
    for org in ORGS:
        pid = person.ids.get(org)
        if not pid:
            per_source[org] = {"chain": 1, "requests": 1, "resources": 0, "longest": "patient not held"}
            continue
        store = dataset.stores[org]
        counts = {t: len(store.search(t, {"patient": [pid]})[0]) for t in FETCH_TYPES}
        pages = {t: max(1, math.ceil(n / page)) for t, n in counts.items()}
        longest = max(FETCH_TYPES, key=lambda t: (pages[t], counts[t]))
        patient_reads = 0 if org in known else 1
        per_source[org] = {
            "chain": patient_reads + pages[longest],
            "requests": patient_reads + sum(pages.values()),
            "resources": sum(counts.values()),
            "longest": f"{'' if patient_reads else 'no Patient search; '}"
            f"{longest} ({counts[longest]} → {pages[longest]} page(s))",
        }
    slowest = max(ORGS, key=lambda o: per_source[o]["chain"])
    return {
        "page_size": page,
        "per_source": per_source,
        "chain": per_source[slowest]["chain"],
        "slowest_source": slowest,
        "requests": sum(s["requests"] for s in per_source.values()),
        "resources": sum(s["resources"] for s in per_source.values()),
    }


def timed_fetch(
    h: Harness, ctx, patient: dict, nhs: str, sequential: bool, job_class: type[FetchJob] = FetchJob
) -> tuple[float, float, FetchJob]:
    """A fresh FetchJob for the launch's sources, built as RecordService.gather builds it (the Patient it
    read from the launching EHR passed in for the user-token source); wall and CPU ms."""
    service = h.service
    sources = record_sources(service.config, ctx.iss)
    tokens = {s.id: service._token_source(s, ctx) for s in sources}
    known = {s.id: patient for s in sources if s.auth == "user"}
    rid = f"bench-{uuid.uuid4().hex[:12]}"
    cpu0, t0 = time.process_time(), time.perf_counter()
    job = job_class(
        sources,
        nhs,
        tokens,
        rid,
        known_patients=known,
        types=CATALOGUE.fetch_types,
        patient_fields=CATALOGUE.patient_fields,
    ).start(sequential=sequential)
    if not job.wait(60):
        raise RuntimeError("fetch did not finish in 60 s")
    wall, cpu = (time.perf_counter() - t0) * 1000, (time.process_time() - cpu0) * 1000
    return wall, cpu, job


def timed_service(h: Harness, ctx, request_id: str | None = None) -> float:
    """The viewer's own path: RecordService.gather (EHR Patient read, then the fan-out) until complete."""
    t0 = time.perf_counter()
    entry = h.service.gather(ctx, request_id or f"bench-{uuid.uuid4().hex[:12]}", refresh=True)
    if entry.job is not None and not entry.job.wait(60):
        raise RuntimeError("service fetch did not finish in 60 s")
    return (time.perf_counter() - t0) * 1000


def job_outcome(job: FetchJob) -> dict:
    return {
        sid: {"state": r.state, "requests": r.requests, "resources": sum(len(v) for v in r.resources.values())}
        for sid, r in job.results.items()
    }


def measure_rtt(h: Harness, person, latency_ms: int, repeats: int = 25) -> float:
    """Median wall time of a small authorised GET (Patient read) on the fetch's own pooled session."""
    service = h.service
    source = next(s for s in h.config.sources if s.id == "hospital")
    token = service.backend.token_for(source)
    url = f"{source.base_url}/Patient/{person.ids['hospital']}" if "hospital" in person.ids else source.base_url
    h.set_latency(latency_ms)
    http = http_pool()
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}
    samples = []
    for i in range(repeats + 3):
        t0 = time.perf_counter()
        resp = http.request("GET", url, headers=headers, timeout=10.0, retries=False)
        json.loads(resp.data)
        if i >= 3:  # the first few open the connection
            samples.append((time.perf_counter() - t0) * 1000)
        assert resp.status == 200, resp.status
    return statistics.median(samples)


def cpu_breakdown(h: Harness, ctx, patient: dict, nhs: str, runs: int = 10) -> dict:
    """Where the parallel fetch's CPU goes (separate, metered runs; not part of the timed rounds).

    The sandbox process's CPU comes from /proc in 10 ms ticks, so it is averaged over all the runs.
    """
    walls, process, viewer = [], [], []
    sandbox0 = h.sandbox_cpu_ms()
    for _ in range(runs):
        viewer0 = MeteredFetchJob.cpu_ms
        wall, cpu, _ = timed_fetch(h, ctx, patient, nhs, sequential=False, job_class=MeteredFetchJob)
        walls.append(wall)
        process.append(cpu)
        viewer.append(MeteredFetchJob.cpu_ms - viewer0)
    return {
        "runs": runs,
        "wall_ms": round(statistics.median(walls), 1),
        "viewer_process_cpu_ms": round(statistics.median(process), 1),
        "viewer_get_and_parse_cpu_ms": round(statistics.median(viewer), 1),
        "sandbox_process_cpu_ms_mean": round((h.sandbox_cpu_ms() - sandbox0) / runs, 1),
    }


def request_log_check(h: Harness, ctx, patient: dict, nhs: str, plan: dict) -> dict:
    """The sandbox's request log for one bare parallel fetch and one service-path run: requests per
    organisation against the plan, and how often the service path read the launching EHR's Patient."""
    _, _, job = timed_fetch(h, ctx, patient, nhs, sequential=False)
    fetch_log = h.sandbox_requests(job.request_id)
    service_id = f"bench-{uuid.uuid4().hex[:12]}"
    timed_service(h, ctx, service_id)
    service_log = h.sandbox_requests(service_id)

    def per_org(rows: list[dict]) -> dict[str, int]:
        return {org: sum(1 for r in rows if r["org_id"] == org) for org in ORGS}

    def patient_reads(rows: list[dict], org: str) -> int:
        return sum(1 for r in rows if r["org_id"] == org and "/Patient" in r["url"])

    fetch_counts = per_org(fetch_log)
    expected = {org: s["requests"] for org, s in plan["per_source"].items()}
    if fetch_counts != expected:
        raise RuntimeError(f"sandbox log {fetch_counts} does not match the plan {expected}")
    return {
        "fetch_requests_per_org": fetch_counts,
        "service_requests_per_org": per_org(service_log),
        "service_patient_requests_per_org": {org: patient_reads(service_log, org) for org in ORGS},
        "service_duration_ms_by_sandbox": round(sum(r["duration_ms"] for r in service_log), 1),
    }


def bench_fetch(h: Harness, http: requests.Session, person, rounds: int, rtt_ms: float, gcmon: GcMonitor) -> dict:
    ctx_id = h.launch(http, person.nhs_number)
    entry = h.service._cache[ctx_id]
    entry.job.wait(60)  # the launch's own fetch: warms backend tokens, discovery and connections
    ctx = h.viewer_app.extensions["launch"].contexts.load(ctx_id)
    patient = entry.patient  # what RecordService.gather read from the launching EHR
    known = {s.id for s in record_sources(h.config, ctx.iss) if s.auth == "user"}
    plan = fetch_plan(h.dataset, person, known)
    timed_fetch(h, ctx, patient, person.nhs_number, sequential=False)  # warm-up, not recorded
    _, _, seq_job = timed_fetch(h, ctx, patient, person.nhs_number, sequential=True)
    reference = job_outcome(seq_job)
    sized = {org: s["resources"] for org, s in plan["per_source"].items()}
    if {sid: o["resources"] for sid, o in reference.items()} != sized:
        raise RuntimeError(f"the sizing copy of the data differs from the sandbox's: {reference} vs {sized}")
    parallel, parallel_cpu, sequential, sequential_cpu, service = [], [], [], [], []
    parallel_gc2 = 0
    for _ in range(rounds):  # interleaved: parallel, sequential, parallel, service path
        for kind in ("parallel", "sequential", "parallel", "service"):
            if kind == "service":
                service.append(timed_service(h, ctx))
                continue
            mark = gcmon.mark()
            wall, cpu, job = timed_fetch(h, ctx, patient, person.nhs_number, sequential=kind == "sequential")
            if kind == "parallel" and gcmon.since(mark)["gen2_count"]:
                parallel_gc2 += 1
            if job_outcome(job) != reference:
                raise RuntimeError(f"{kind} fetch differed: {job_outcome(job)} vs {reference}")
            (parallel if kind == "parallel" else sequential).append(wall)
            (parallel_cpu if kind == "parallel" else sequential_cpu).append(cpu)
    floor = plan["chain"] * rtt_ms
    par, seq = summarise(parallel), summarise(sequential)
    measured_requests = sum(o["requests"] for o in reference.values())
    return {
        "nhs_number": person.nhs_number,
        "name": person.name,
        "ctx_id": ctx_id,
        "plan": plan,
        "outcome": reference,
        "requests_measured": measured_requests,
        "floor_ms": round(floor, 1),
        "sequential_floor_ms": round(measured_requests * rtt_ms, 1),
        "parallel_ms": par,
        "parallel_process_cpu_ms": summarise(parallel_cpu),
        "sequential_ms": seq,
        "sequential_process_cpu_ms": summarise(sequential_cpu),
        "service_path_ms": summarise(service),
        "parallel_runs_with_gen2_gc": parallel_gc2,
        "parallel_cpu_breakdown": cpu_breakdown(h, ctx, patient, person.nhs_number),
        "sandbox_request_log": request_log_check(h, ctx, patient, person.nhs_number, plan),
        "parallel_over_floor": round(par["median"] / floor, 2),
        "parallel_p95_over_floor": round(par["p95"] / floor, 2),
        "sequential_over_parallel": round(seq["median"] / par["median"], 1),
    }


# ---- 2. render time after the data has arrived ----------------------------------------------------------


def _cookie(http: requests.Session, name: str) -> str:
    for cookie in requests.cookies.RequestsCookieJar.__iter__(http.cookies):
        if cookie.name == name:
            return cookie.value
    raise RuntimeError(f"no {name} cookie after the launch")


def bench_render(h: Harness, http: requests.Session, ctx_id: str, repeats: int, gcmon: GcMonitor) -> dict:
    """In-process Flask test requests: wall and process CPU per request, cold (merge + render) and warm."""
    service = h.service
    entry = service._cache[ctx_id]
    entry.job.wait(60)
    client = h.viewer_app.test_client()
    client.set_cookie("scr_sid", _cookie(http, "scr_sid"))
    out = {}

    def get(path: str) -> tuple[float, float, int]:
        cpu0, t0 = time.process_time(), time.perf_counter()
        resp = client.get(path)
        wall, cpu = (time.perf_counter() - t0) * 1000, (time.process_time() - cpu0) * 1000
        if resp.status_code != 200:
            raise RuntimeError(f"GET {path} -> {resp.status_code}")
        return wall, cpu, len(resp.data)

    mark = gcmon.mark()
    merge = []
    for _ in range(repeats):
        entry.merged = {}
        t0 = time.perf_counter()
        service.merged(entry)
        merge.append((time.perf_counter() - t0) * 1000)
    out["merge_only_ms"] = summarise(merge)
    for label, path in (("summary", f"/r/{ctx_id}/"), ("results", f"/r/{ctx_id}/results")):
        get(path)  # template compile etc.
        cold_wall, cold_cpu, warm_wall, warm_cpu, http_wall = [], [], [], [], []
        size = 0
        for _ in range(repeats):
            entry.merged = {}  # as on the first request after the last organisation answered
            wall, cpu, size = get(path)
            cold_wall.append(wall)
            cold_cpu.append(cpu)
            wall, cpu, size = get(path)  # the merged record is cached: render only
            warm_wall.append(wall)
            warm_cpu.append(cpu)
            t0 = time.perf_counter()
            http.get(f"{h.viewer_url}{path}", timeout=30).raise_for_status()
            http_wall.append((time.perf_counter() - t0) * 1000)
        out[label] = {
            "bytes": size,
            "first_after_arrival_wall_ms": summarise(cold_wall),
            "first_after_arrival_cpu_ms": summarise(cold_cpu),
            "cached_wall_ms": summarise(warm_wall),
            "cached_cpu_ms": summarise(warm_cpu),
            "cached_http_wall_ms": summarise(http_wall),
        }
    out["gc_during_render_phase"] = gcmon.since(mark)
    return out


# ---- 3. memory of a viewer worker (subprocess) ----------------------------------------------------------


def worker_main(port: int) -> int:
    """``--viewer-worker PORT``: serve only the viewer, until stdin closes."""
    _quiet_logs()
    config = load_config(SANDBOX_CONFIG, env=dict(os.environ))
    app = create_app(config)
    server = _bind(port)
    server.app = app
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()
    server.shutdown()
    return 0


def bench_memory(h: Harness, person) -> dict:
    """Replace the in-process viewer with a viewer-only subprocess on the same port, load the record."""
    port = h.viewer_srv.server_port
    h.stop_viewer()
    env = {**os.environ, **h.env, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "bench.record_bench", "--viewer-worker", str(port)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("viewer worker did not start")
        stages = {"idle": proc_status(proc.pid)}
        with new_http() as http:
            ctx_id = h.launch(http, person.nhs_number)
            base = f"{h.viewer_url}/r/{ctx_id}/"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                resp = http.get(f"{base}progress", headers={"HX-Request": "true"}, timeout=30)
                if resp.headers.get("HX-Refresh") == "true":
                    break
                time.sleep(0.1)
            else:
                raise RuntimeError("record never completed in the worker")
            http.get(base, timeout=30).raise_for_status()
            stages["record_loaded_summary"] = proc_status(proc.pid)
            for name in SECTION_PAGES:
                http.get(f"{base}{name}", timeout=30).raise_for_status()
            stages["all_sections"] = proc_status(proc.pid)
            resp = http.get(f"{base}export.json", timeout=30)
            resp.raise_for_status()
            stages["export"] = proc_status(proc.pid)
            stages["export"]["bytes"] = len(resp.content)
            for _ in range(EXTRA_LAUNCHES):  # each launch is a new context: a new cached record
                ctx_id = h.launch(http, person.nhs_number)
            time.sleep(1.0)  # let the last fetch finish
            stages[f"after_{EXTRA_LAUNCHES}_more_launches"] = proc_status(proc.pid)
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {"nhs_number": person.nhs_number, "viewer_worker": stages}


# ---- report ---------------------------------------------------------------------------------------------


def machine() -> dict:
    model = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if "model name" in ln),
        platform.processor(),
    )
    return {"cpus": os.cpu_count(), "cpu": model, "python": platform.python_version(), "platform": platform.platform()}


def print_report(res: dict) -> None:
    t = TARGETS
    print(f"\nRecord benchmark {res['date']}  ({res['machine']['cpus']} CPUs, {res['machine']['cpu']})")
    print(
        f"injected latency {res['latency_ms']} ms; small GET baseline {res['baseline_ms']:.1f} ms "
        f"(direct RTT at {res['latency_ms']} ms: {res['rtt_direct_ms']:.1f}); RTT used for the floor "
        f"{res['rtt_ms']:.1f} ms; PAGE_SIZE {PAGE_SIZE}; {res['rounds']} interleaved rounds\n"
    )
    print("1. Launch-to-summary (record fetch, ms)")
    head = (
        f"{'patient':<34}{'res':>5}{'reqs':>5}{'chain':>6}{'floor':>7}{'parallel med/p95':>18}"
        f"{'par/floor':>10}{'sequential med/p95':>20}{'seq/par':>8}{'service path med':>18}"
    )
    print(head)
    print("-" * len(head))
    for key in ("median", "largest"):
        f = res["fetch"][key]
        par, seq = f["parallel_ms"], f["sequential_ms"]
        label = f"{key}: {f['name'][:18]} {f['nhs_number']}"
        print(
            f"{label:<34}{f['plan']['resources']:>5}{f['requests_measured']:>5}{f['plan']['chain']:>6}"
            f"{f['floor_ms']:>7.0f}{par['median']:>10.0f} / {par['p95']:<5.0f}"
            f"{f['parallel_over_floor']:>9.2f}{'' if f['parallel_over_floor'] <= t['parallel_over_floor'] else '!'}"
            f"{seq['median']:>12.0f} / {seq['p95']:<5.0f}"
            f"{f['sequential_over_parallel']:>7.1f}{'' if f['sequential_over_parallel'] >= 8 else '!'}"
            f"{f['service_path_ms']['median']:>14.0f}"
        )
    print(
        f"targets: parallel/floor <= {t['parallel_over_floor']}, sequential/parallel >= "
        f"{t['sequential_over_parallel']}x ('!' = missed); "
        "service path = RecordService.gather incl. its EHR Patient read"
    )
    print("sandbox: its own process (FHIR servers + authorisation server), as in production")
    for key in ("median", "largest"):
        f = res["fetch"][key]
        b = f["parallel_cpu_breakdown"]
        print(
            f"  {key}: CPU per parallel fetch: viewer process {b['viewer_process_cpu_ms']:.0f} ms (GET+parse "
            f"{b['viewer_get_and_parse_cpu_ms']:.0f}), sandbox process {b['sandbox_process_cpu_ms_mean']:.0f} ms; "
            f"gen-2 GC during {f['parallel_runs_with_gen2_gc']}/{f['parallel_ms']['n']} parallel runs; floor chain: "
            f"{f['plan']['slowest_source']} {f['plan']['per_source'][f['plan']['slowest_source']]['longest']}"
        )
        log = f["sandbox_request_log"]
        print(
            f"    sandbox log: fetch requests {log['fetch_requests_per_org']}; service path Patient requests "
            f"{log['service_patient_requests_per_org']}"
        )
    print()
    r = res["render"]
    print(f"2. Render after arrival, largest patient (in-process test client, ms; target < {t['render_ms']:.0f})")
    print(
        f"{'page':<10}{'first after arrival wall/cpu med':>34}{'p95 wall':>10}{'cached wall/cpu med':>22}"
        f"{'p95 wall':>10}{'HTTP cached med':>17}{'KB':>7}"
    )
    for page in ("summary", "results"):
        p = r[page]
        first, first_cpu = p["first_after_arrival_wall_ms"], p["first_after_arrival_cpu_ms"]
        print(
            f"{page:<10}{first['median']:>26.1f} / {first_cpu['median']:<5.1f}"
            f"{p['first_after_arrival_wall_ms']['p95']:>10.1f}{p['cached_wall_ms']['median']:>14.1f} / "
            f"{p['cached_cpu_ms']['median']:<5.1f}{p['cached_wall_ms']['p95']:>10.1f}"
            f"{p['cached_http_wall_ms']['median']:>17.1f}{p['bytes'] / 1024:>7.0f}"
        )
    g = r["gc_during_render_phase"]
    print(
        f"merge only (RecordService.merged): median {r['merge_only_ms']['median']:.1f}, "
        f"p95 {r['merge_only_ms']['p95']:.1f}; gen-2 GC in this phase: {g['gen2_count']} pauses, "
        f"max {g['gen2_max_ms']:.0f} ms\n"
    )
    m = res["memory"]
    print(f"3. Memory (MB; target: a viewer worker < {t['worker_rss_mb']:.0f} MB peak RSS)")
    for stage, v in m["viewer_worker"].items():
        print(f"  viewer worker subprocess, {stage:<32} VmRSS {v['VmRSS']:>6.1f}   VmHWM {v['VmHWM']:>6.1f}")
    for stage, v in m["harness"].items():
        label = f"bench process (viewer + sizing data), {stage}"
        print(f"  {label:<58} VmRSS {v['VmRSS']:>6.1f}   VmHWM {v['VmHWM']:>6.1f}")
    for stage, v in m["sandbox_process"].items():
        print(f"  sandbox process, {stage:<41} VmRSS {v['VmRSS']:>6.1f}   VmHWM {v['VmHWM']:>6.1f}")
    print(f"\nwrote {RESULTS.relative_to(ROOT)} in {res['elapsed_s']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (each: P, S, P, service)")
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--render-repeats", type=int, default=15)
    parser.add_argument("--no-freeze", action="store_true", help="do not gc.freeze() the sizing copy of the data")
    parser.add_argument("--viewer-worker", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.viewer_worker:
        return worker_main(args.viewer_worker)
    if args.rounds < 7:
        parser.error("--rounds must be at least 7")
    _quiet_logs()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="scr-bench-") as tmp:
        h = Harness(Path(tmp))
        if not args.no_freeze:
            # The sizing copy of the data lives in this process only because of the harness; freezing it
            # keeps its objects out of the viewer's gen-2 collections (a real worker does not hold them).
            gc.collect()
            gc.freeze()
        gcmon = GcMonitor()
        try:
            patients, sizes = pick_patients(h.dataset)
            baseline = measure_rtt(h, patients["largest"], 0)
            rtt_direct = measure_rtt(h, patients["largest"], args.latency_ms)  # also sets the latency everywhere
            rtt = args.latency_ms + baseline
            res = {
                "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "machine": machine(),
                "latency_ms": args.latency_ms,
                "rounds": args.rounds,
                "sandbox": "separate process: python -m sandbox.serve --only sandbox",
                "gc_freeze_after_sizing_load": not args.no_freeze,
                "frozen_objects": gc.get_freeze_count(),
                "page_size": PAGE_SIZE,
                "targets": TARGETS,
                "baseline_ms": round(baseline, 2),
                "rtt_direct_ms": round(rtt_direct, 2),
                "rtt_ms": round(rtt, 2),
                "patient_sizes": sizes,
                "fetch": {},
            }
            with new_http() as http:
                for key in ("median", "largest"):
                    res["fetch"][key] = bench_fetch(h, http, patients[key], args.rounds, rtt, gcmon)
                h.rss["after_fetch_benchmarks"] = proc_status()
                h.sandbox_rss["after_fetch_benchmarks"] = proc_status(h.sandbox_proc.pid)
                ctx_id = res["fetch"]["largest"]["ctx_id"]
                res["render"] = bench_render(h, http, ctx_id, args.render_repeats, gcmon)
                h.rss["after_render"] = proc_status()
            res["memory"] = bench_memory(h, patients["largest"])
            res["memory"]["harness"] = h.rss
            h.sandbox_rss["end"] = proc_status(h.sandbox_proc.pid)
            res["memory"]["sandbox_process"] = h.sandbox_rss
        finally:
            code = h.stop()
    res["sandbox_exit_code"] = code
    res["elapsed_s"] = round(time.perf_counter() - started, 1)
    RESULTS.write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print_report(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
