"""Production load benchmark: gunicorn + Redis + PostgreSQL under concurrent launches, and audit writes.

Run from the repository root (PostgreSQL and Redis running locally)::

    .venv/bin/python -m bench.load_bench [--latency-ms 50] [--workers 2] [--threads 8] [--poll-s 1.0]

Starts the sandbox (``python -m sandbox.serve --only sandbox``) and the viewer under gunicorn
(``gunicorn.conf.py``, gthread) with Redis (a separate db number, flushed first) and a fresh PostgreSQL
database, injects latency on all four organisations, and measures:

1. launches per second and launch-to-summary p50/p95 at 1, 8 and 32 concurrent launches, for a mix of
   patients dr-patel may open without a reason (each launch: its own browser session, the scripted EHR
   launch through SMART to the summary; loading page -> htmx-style ``/progress`` polling -> summary);
2. the viewer's own CPU per launch (gunicorn master + workers from /proc, not the sandbox), for every mix
   level and separately for the median-size and the largest patient;
3. at 8 concurrent launches, throughput against what that CPU per launch allows on the cores the viewer
   actually had (2 cores minus what everything else on the box used during the level);
4. audit appends per second and p95 latency with ``AuditStore`` on PostgreSQL and on SQLite, 1/4/8 threads.

Prints tables and writes ``bench/load_results.json``. Cleans up every process and the temporary databases.
See ``bench/README.md``, "Production load".
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import itertools
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode, urljoin, urlsplit

import redis
import requests
from sqlalchemy import create_engine, text

from app.audit.events import audit_event
from app.audit.store import AuditStore
from app.config import load_config
from bench.record_bench import SYNTHEA_DIR, free_port, machine, pick_patients, summarise
from sandbox.dataset import load_dataset
from sandbox.serve import SANDBOX_CONFIG
from sandbox.settings import sandbox_settings
from tests.conftest import LoopbackCookieJar

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "load_results.json"
GUNICORN = ROOT / ".venv" / "bin" / "gunicorn"
PG_ADMIN_URL = os.environ.get("SCR_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("SCR_BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")
ORGS = ("gp", "hospital", "community", "council")
USER = "dr-patel"  # a GP at Riverside (the gp server): GP-registered patients open without a reason
NEEDS_BREAK_GLASS = {"9991000747"}  # Oliver: never part of the mix
MARKER = "Allergies and adverse reactions"  # the summary with clinical content
START_TIMEOUT_S = 180
TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")
TARGETS = {
    "viewer_cpu_ms_median_patient": 60.0,
    "viewer_cpu_ms_largest_patient": 150.0,
    "throughput_over_cpu_allowed": 0.80,
    "audit_p95_ms": 10.0,
}


# ---- process and machine CPU ----------------------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def tree_cpu_ms(root: int) -> float:
    """utime + stime + cutime + cstime of ``root`` and its live children (gunicorn: master + workers).

    A worker that exits and is reaped moves its time into the master's cutime/cstime, so the sum is
    continuous across worker restarts.
    """
    pids = [root]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat(int(entry.name))[1]) == root:
                    pids.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    total = 0
    for pid in pids:
        try:
            f = _stat(pid)
        except OSError:
            continue
        total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total * TICK_MS


def named_cpu_ms(names: tuple[str, ...]) -> float:
    """utime + stime of every live process whose command name is in ``names`` (PostgreSQL backends, Redis)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                head, _, rest = Path(f"/proc/{entry.name}/stat").read_text().rpartition(")")
                if head.split("(", 1)[1] in names:
                    f = rest.split()
                    total += int(f[11]) + int(f[12])
            except (OSError, IndexError):
                continue
    return total * TICK_MS


def machine_cpu_ms() -> tuple[float, float]:
    """(busy, total) CPU ms of the whole machine, all cores, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    total = sum(fields)
    idle = fields[3] + fields[4]  # idle + iowait
    return (total - idle) * TICK_MS, total * TICK_MS


class CpuMeter:
    """CPU used by the viewer (gunicorn tree), the sandbox, this load generator and the rest of the box."""

    def __init__(self, viewer_pid: int, sandbox_pid: int) -> None:
        self.viewer_pid, self.sandbox_pid = viewer_pid, sandbox_pid

    def sample(self) -> dict:
        busy, total = machine_cpu_ms()
        return {
            "viewer": tree_cpu_ms(self.viewer_pid),
            "sandbox": tree_cpu_ms(self.sandbox_pid),
            "loadgen": time.process_time() * 1000,
            "postgres_redis": named_cpu_ms(("postgres", "redis-server")),
            "machine_busy": busy,
            "machine_total": total,
        }

    @staticmethod
    def delta(before: dict, after: dict) -> dict:
        d = {k: after[k] - before[k] for k in before}
        # the rest of the box: kernel, other users' processes, short-lived PostgreSQL backends
        d["other"] = d["machine_busy"] - d["viewer"] - d["sandbox"] - d["loadgen"] - d["postgres_redis"]
        return d


# ---- the deployment: sandbox + gunicorn viewer + Redis + PostgreSQL -----------------------------------


def create_pg_database(prefix: str) -> str:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def drop_pg_database(url: str) -> None:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)'))
    admin.dispose()


def stop_process(proc: subprocess.Popen) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def new_http() -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.cookies = LoopbackCookieJar()
    return session


class Deployment:
    def __init__(self, tmp: Path, pg_url: str, workers: int, threads: int) -> None:
        self.tmp, self.procs, self.logs = tmp, [], []
        ports = {"sandbox": free_port(), "viewer": free_port()}
        self.sandbox_url = f"http://127.0.0.1:{ports['sandbox']}"
        self.viewer_url = f"http://127.0.0.1:{ports['viewer']}"
        metrics_dir = tmp / "metrics"
        metrics_dir.mkdir()
        self.env = {
            **os.environ,
            "SCR_CONFIG": str(SANDBOX_CONFIG),
            "SANDBOX_URL": self.sandbox_url,
            "VIEWER_URL": self.viewer_url,
            "SCR_KEYS_FILE": str(tmp / "keys.json"),
            "SCR_AUDIT_SQLITE": str(tmp / "unused.sqlite3"),
            "SCR_SYNTHEA_DIR": str(SYNTHEA_DIR),
            "SCR_DATABASE_URL": pg_url,
            "REDIS_URL": REDIS_URL,
            "SCR_SECRET_KEY": f"bench-{uuid.uuid4().hex}",
            "WEB_CONCURRENCY": str(workers),
            "GUNICORN_THREADS": str(threads),
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),  # inside tmp, so it is cleaned up with it
            "PYTHONPATH": str(ROOT),
        }
        self.config = load_config(SANDBOX_CONFIG, env=self.env)
        self.sandbox: subprocess.Popen | None = None
        self.viewer: subprocess.Popen | None = None

    def start(self) -> None:
        self.sandbox = self._spawn(
            [sys.executable, "-m", "sandbox.serve", "--only", "sandbox"], "sandbox.log", stdout=subprocess.PIPE
        )
        # Sizing only (which patients are median / largest): the same data the sandbox is loading now.
        self.dataset = load_dataset(sandbox_settings(self.config))
        gc.collect()
        gc.freeze()  # keep the sizing copy out of this process's collections while it generates load
        self._wait_for_sandbox()
        self.viewer = self._spawn(
            [
                str(GUNICORN),
                "--config",
                "gunicorn.conf.py",
                "--bind",
                self.viewer_url.removeprefix("http://"),
                "app:create_app()",
            ],
            "viewer.log",
        )
        self._wait_ready()
        self.cpu = CpuMeter(self.viewer.pid, self.sandbox.pid)

    def _spawn(self, argv: list[str], log_name: str, stdout=None) -> subprocess.Popen:
        log = (self.tmp / log_name).open("w")
        self.logs.append(log)
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter / gunicorn
            argv, cwd=ROOT, env=self.env, stdout=stdout or log, stderr=log, text=True
        )
        self.procs.append(proc)
        return proc

    def _wait_for_sandbox(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            line = self.sandbox.stdout.readline()
            if not line:
                break
            if "Press Ctrl+C" in line:
                threading.Thread(target=self.sandbox.stdout.read, daemon=True).start()  # never block on a pipe
                return
        raise RuntimeError(f"sandbox did not start: {(self.tmp / 'sandbox.log').read_text()[-3000:]}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.viewer.poll() is not None:
                break
            try:
                resp = requests.get(f"{self.viewer_url}/readyz", timeout=2)
                if resp.status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"viewer did not become ready: {(self.tmp / 'viewer.log').read_text()[-3000:]}")

    def worker_pids(self) -> list[int]:
        out = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if int(_stat(int(entry.name))[1]) == self.viewer.pid:
                        out.append(int(entry.name))
                except (OSError, IndexError, ValueError):
                    continue
        return sorted(out)

    def set_latency(self, ms: int) -> None:
        with new_http() as http:
            for org in ORGS:
                http.post(f"{self.sandbox_url}/admin/faults/{org}", json={"latency_ms": ms}).raise_for_status()

    def metrics(self) -> dict[str, float]:
        """The viewer's Prometheus counters (all workers), summed per metric name + selected labels."""
        body = requests.get(f"{self.viewer_url}/metrics", timeout=10).text
        out: dict[str, float] = {}
        for line in body.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name_labels, _, value = line.rpartition(" ")
            name = name_labels.split("{", 1)[0]
            if name == "scr_source_fetch_total":
                out["source_fetches"] = out.get("source_fetches", 0) + float(value)
            elif name == "scr_audit_write_seconds_bucket":
                le = re.search(r'le="([^"]+)"', name_labels).group(1)
                key = f"audit_le_{le}"
                out[key] = out.get(key, 0) + float(value)
            elif name == "scr_audit_write_seconds_sum":
                out["audit_seconds_sum"] = out.get("audit_seconds_sum", 0) + float(value)
            elif name == "scr_http_requests_total":
                out["http_requests"] = out.get("http_requests", 0) + float(value)
        return out

    def stop(self) -> dict[str, int | None]:
        codes = {}
        for name, proc in (("viewer", self.viewer), ("sandbox", self.sandbox)):
            if proc is not None:
                codes[name] = stop_process(proc)
        for log in self.logs:
            log.close()
        return codes


# ---- one launch, as a browser with htmx would do it ------------------------------------------------------


def _hop(dep: Deployment, url: str) -> str:
    """A short name for one hop of the launch: which server, which endpoint."""
    parts = urlsplit(url)
    server = "viewer" if url.startswith(dep.viewer_url) else "sandbox"
    path = "/r/<ctx>/" if parts.path.startswith("/r/") else parts.path
    return f"{server} {path}"


def launch(dep: Deployment, nhs: str, poll_s: float) -> dict:
    """EHR launch -> SMART -> ``/r/<ctx>/``, redirects followed one by one (each hop timed); if that is the
    loading page, poll ``/progress`` every ``poll_s`` (htmx: ``every 1s``) until ``HX-Refresh: true``, then GET
    the page. The whole thing is the launch-to-summary time."""
    http = new_http()
    polls, loading, error, hops, first_ms = 0, False, None, {}, None
    t0 = time.perf_counter()
    try:
        url = f"{dep.sandbox_url}/ehr/launch?{urlencode({'user': USER, 'patient': nhs})}"
        for _ in range(10):
            h0 = time.perf_counter()
            resp = http.get(url, allow_redirects=False, timeout=60)
            hops[_hop(dep, url)] = (time.perf_counter() - h0) * 1000
            if resp.status_code not in (301, 302, 303, 307, 308):
                break
            url = urljoin(url, resp.headers["Location"])
        first_ms = (time.perf_counter() - t0) * 1000
        found = re.search(r"/r/([^/]+)/$", url)
        if resp.status_code == 200 and found and MARKER not in resp.text and 'id="sources"' in resp.text:
            loading = True
            page = f"{dep.viewer_url}/r/{found.group(1)}/"
            while time.perf_counter() - t0 < 60:
                time.sleep(poll_s)
                polls += 1
                prog = http.get(f"{page}progress", headers={"HX-Request": "true"}, timeout=60)
                if prog.headers.get("HX-Refresh") == "true":
                    break
            resp = http.get(page, timeout=60)
        wall = (time.perf_counter() - t0) * 1000
        if resp.status_code != 200 or MARKER not in resp.text:
            error = f"{resp.status_code} at {_hop(dep, resp.url)}"
    except requests.RequestException as exc:
        wall, error = (time.perf_counter() - t0) * 1000, exc.__class__.__name__
    finally:
        http.close()
    return {
        "nhs": nhs,
        "ms": wall,
        "first_screen_ms": first_ms,
        "hops_ms": hops,
        "loading": loading,
        "polls": polls,
        "error": error,
    }


def run_level(dep: Deployment, label: str, patients: list[str], concurrency: int, n: int, poll_s: float) -> dict:
    """``n`` launches with ``concurrency`` in flight (closed loop), patients taken in turn from ``patients``."""
    order = list(itertools.islice(itertools.cycle(patients), n))
    results: list[dict] = []
    lock = threading.Lock()
    it = iter(order)

    def worker() -> None:
        while True:
            with lock:
                nhs = next(it, None)
            if nhs is None:
                return
            out = launch(dep, nhs, poll_s)
            with lock:
                results.append(out)

    time.sleep(0.5)  # let the previous level's stragglers finish before the baseline
    m0, c0 = dep.metrics(), dep.cpu.sample()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall_s = time.perf_counter() - t0
    time.sleep(0.3)  # fetch threads of a duplicate fetch (if any) and the last audit writes
    c1, m1 = dep.cpu.sample(), dep.metrics()
    cpu = CpuMeter.delta(c0, c1)
    ok = [r for r in results if not r["error"]]
    times = [r["ms"] for r in ok]
    mdelta = {k: m1.get(k, 0) - m0.get(k, 0) for k in m1}
    audit_buckets = sorted(
        ((float(k.removeprefix("audit_le_")), v) for k, v in mdelta.items() if k.startswith("audit_le_")),
        key=lambda kv: kv[0],
    )
    audit_n = audit_buckets[-1][1] if audit_buckets else 0
    audit_p95_bucket = next((le for le, v in audit_buckets if audit_n and v >= 0.95 * audit_n), None)
    wall_ms = wall_s * 1000
    out = {
        "label": label,
        "concurrency": concurrency,
        "launches": n,
        "errors": [r for r in results if r["error"]],
        "wall_s": round(wall_s, 2),
        "launches_per_s": round(len(ok) / wall_s, 2),
        "launch_to_summary_ms": summarise(times) if times else None,
        "first_screen_ms": summarise([r["first_screen_ms"] for r in ok if r["first_screen_ms"] is not None]),
        "hops_median_ms": {
            hop: round(statistics.median(r["hops_ms"][hop] for r in ok if hop in r["hops_ms"]), 1)
            for hop in dict.fromkeys(h for r in ok for h in r["hops_ms"])
        },
        "via_loading_page": sum(r["loading"] for r in ok),
        "progress_polls": sum(r["polls"] for r in ok),
        "cpu_ms_per_launch": {
            k: round(cpu[k] / n, 1) for k in ("viewer", "sandbox", "loadgen", "postgres_redis", "other", "machine_busy")
        },
        "cores_used": {
            k: round(cpu[k] / wall_ms, 2)
            for k in ("viewer", "sandbox", "loadgen", "postgres_redis", "other", "machine_busy")
        },
        "cpu_raw_ms": {k: round(v, 1) for k, v in cpu.items() if isinstance(v, float)},
        "source_fetches_per_launch": round(mdelta.get("source_fetches", 0) / n / len(ORGS), 2),
        "viewer_http_requests_per_launch": round(mdelta.get("http_requests", 0) / n, 2),
        "audit_writes_in_app": int(audit_n),
        "audit_in_app_mean_ms": round(1000 * mdelta.get("audit_seconds_sum", 0) / audit_n, 2) if audit_n else None,
        "audit_in_app_p95_bucket_le_ms": audit_p95_bucket * 1000 if audit_p95_bucket is not None else None,
        "samples": [_rounded(r) for r in results],
    }
    return out


def _rounded(value):
    if isinstance(value, float):
        return round(value, 1)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def cpu_allowance(level: dict, cores: int) -> dict:
    """Throughput against what the viewer's CPU per launch allows on the cores it had.

    Cores the viewer had = all cores minus what the sandbox, the load generator and everything else
    (PostgreSQL, Redis, the rest of the box) used during the level, measured. Also given: the ceiling if
    the viewer had every core to itself (production: FHIR servers and clients are other machines).
    """
    per_launch = level["cpu_ms_per_launch"]["viewer"]
    used = level["cores_used"]
    others = used["sandbox"] + used["loadgen"] + used["postgres_redis"] + max(used["other"], 0.0)
    available = max(cores - others, 0.01)
    allowed = available * 1000 / per_launch
    allowed_all = cores * 1000 / per_launch
    tput = level["launches_per_s"]
    p50 = level["launch_to_summary_ms"]["median"]
    return {
        "viewer_cpu_ms_per_launch": per_launch,
        "cores": cores,
        "cores_used_by_others": round(others, 2),
        "cores_available_to_viewer": round(available, 2),
        "cpu_allowed_launches_per_s": round(allowed, 2),
        "throughput_over_cpu_allowed": round(tput / allowed, 2),
        "cpu_allowed_launches_per_s_all_cores": round(allowed_all, 2),
        "throughput_over_all_cores": round(tput / allowed_all, 2),
        "concurrency_bound_launches_per_s": round(level["concurrency"] * 1000 / p50, 2),
        "machine_busy_fraction": round(used["machine_busy"] / cores, 2),
    }


# ---- 4. audit appends --------------------------------------------------------------------------------------


BENCH_USER = {
    "name": "Dr Asha Patel",
    "sub": "dr-patel",
    "sds_user_id": "555000000001",
    "roles": ["R8000"],
    "organisation": {"ods": "Y01001", "name": "Riverside Medical Practice"},
}


def bench_audit(url: str, levels: list[tuple[int, int]]) -> dict:
    """``AuditStore(url).append`` of ``audit_event("view", …)`` from N threads; wall per append."""
    store = AuditStore(url)
    store.create_schema()
    rnd = random.Random(7)

    def event(i: int) -> tuple[dict, str]:
        nhs = f"999{rnd.randrange(10**7):07d}"
        return (
            audit_event(
                "view",
                user=BENCH_USER,
                client_id="scr-viewer",
                observer="load-bench",
                request_id=f"bench-{i}",
                patient_nhs=nhs,
                purpose="TREAT",
                what=f"summary /r/ctx{i}/",
                details={"launch-context": f"ctx{i}", "withheld-items": 0},
            ),
            nhs,
        )

    def append(i: int) -> float:
        body, nhs = event(i)
        t0 = time.perf_counter()
        store.append(
            body,
            patient_nhs=nhs,
            user_id="555000000001",
            org_ods="Y01001",
            purpose="TREAT",
            action_code="view",
            outcome="0",
        )
        return (time.perf_counter() - t0) * 1000

    for i in range(20):  # warm-up: connections, statement caches
        append(i)
    out = {"levels": []}
    counter = itertools.count(100)
    lock = threading.Lock()

    def work(barrier: threading.Barrier, count: int, lat: list[float]) -> None:
        mine = [0.0] * count
        barrier.wait()
        for k in range(count):
            mine[k] = append(next(counter))
        with lock:
            lat.extend(mine)

    for threads, events in levels:
        lat: list[float] = []
        barrier = threading.Barrier(threads + 1)
        pool = [threading.Thread(target=work, args=(barrier, events // threads, lat)) for _ in range(threads)]
        for t in pool:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in pool:
            t.join()
        wall = time.perf_counter() - t0
        s = summarise(lat)
        s.pop("samples")
        out["levels"].append(
            {
                "threads": threads,
                "events": len(lat),
                "wall_s": round(wall, 2),
                "events_per_s": round(len(lat) / wall, 1),
                "latency_ms": s | {"mean": round(statistics.fmean(lat), 2)},
            }
        )
    verified = store.verify()
    out["chain_verified"] = {"ok": verified.ok, "checked": verified.checked}
    store.engine.dispose()
    return out


# ---- report ------------------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_report(res: dict) -> None:
    t = TARGETS
    print(f"\nProduction load benchmark {res['date']}  ({res['machine']['cpus']} CPUs, {res['machine']['cpu']})")
    s = res["setup"]
    print(
        f"gunicorn {s['workers']} workers x {s['threads']} threads (gthread); Redis {s['redis']}; PostgreSQL; "
        f"latency {s['latency_ms']} ms on {', '.join(ORGS)}; poll every {s['poll_s']} s; mix of "
        f"{len(res['mix'])} patients\n"
    )
    print("1+2. Launches (mix)")
    head = (
        f"{'level':<12}{'n':>5}{'launch/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'loading':>9}{'fetch/launch':>14}"
        f"{'viewer CPU':>12}{'sandbox':>9}{'loadgen':>9}{'pg+redis':>9}{'other':>7}{'box busy':>10}"
    )
    print(head)
    print("-" * len(head))
    for lv in res["levels"]:
        c, u = lv["cpu_ms_per_launch"], lv["cores_used"]
        lts = lv["launch_to_summary_ms"]
        print(
            f"{lv['label']:<12}{lv['launches']:>5}{lv['launches_per_s']:>10.2f}{lts['median']:>9.0f}{lts['p95']:>9.0f}"
            f"{lv['via_loading_page']:>9}{lv['source_fetches_per_launch']:>14.2f}{c['viewer']:>12.0f}"
            f"{c['sandbox']:>9.0f}{c['loadgen']:>9.0f}{c['postgres_redis']:>9.0f}{c['other']:>7.0f}"
            f"{u['machine_busy'] / 2:>9.0%}"
            f"{'  errors: ' + str(len(lv['errors'])) if lv['errors'] else ''}"
        )
    print("  median ms per hop; audit writes inside the viewer (mean, p95 histogram bucket); throughput/CPU-allowed:")
    for lv in res["levels"]:
        a = lv["cpu_allowance"]
        print(
            f"    {lv['label']:<6} "
            + "  ".join(f"{k} {v:.0f}" for k, v in lv["hops_median_ms"].items())
            + f" | audit {lv['audit_writes_in_app']} x {lv['audit_in_app_mean_ms']} ms, p95 <= "
            f"{lv['audit_in_app_p95_bucket_le_ms']} ms | {a['throughput_over_cpu_allowed']:.0%} of "
            f"{a['cpu_allowed_launches_per_s']:.1f}/s on {a['cores_available_to_viewer']:.2f} cores"
        )
    print()
    print("2. Viewer CPU per launch by patient (ms)")
    for key, target in (("median", t["viewer_cpu_ms_median_patient"]), ("largest", t["viewer_cpu_ms_largest_patient"])):
        for lv in res["per_patient"][key]:
            cpu = lv["cpu_ms_per_launch"]["viewer"]
            print(
                f"  {key:<8} {res['patients'][key]['nhs']} ({res['patients'][key]['resources']} res) "
                f"c={lv['concurrency']:<3} n={lv['launches']:<4} viewer {cpu:6.0f}  sandbox "
                f"{lv['cpu_ms_per_launch']['sandbox']:5.0f}  p50 {lv['launch_to_summary_ms']['median']:5.0f}  "
                f"target <= {target:.0f}: {verdict(cpu <= target)}"
            )
    a = res["throughput_vs_cpu"]
    print(
        f"\n3. c=8: {res['levels'][1]['launches_per_s']:.2f} launch/s vs CPU-allowed "
        f"{a['cpu_allowed_launches_per_s']:.2f} on {a['cores_available_to_viewer']:.2f} cores "
        f"({a['cores']} minus {a['cores_used_by_others']:.2f} used by others) = "
        f"{a['throughput_over_cpu_allowed']:.0%} (target >= 80%: "
        f"{verdict(a['throughput_over_cpu_allowed'] >= t['throughput_over_cpu_allowed'])}); all {a['cores']} cores: "
        f"{a['cpu_allowed_launches_per_s_all_cores']:.2f}/s = {a['throughput_over_all_cores']:.0%}"
    )
    print("\n4. Audit appends")
    for db in ("postgresql", "sqlite"):
        for lv in res["audit"][db]["levels"]:
            lat = lv["latency_ms"]
            print(
                f"  {db:<11} threads {lv['threads']:<2} events {lv['events']:<5} {lv['events_per_s']:>8.0f}/s  "
                f"p50 {lat['median']:6.2f}  p95 {lat['p95']:6.2f}  max {lat['max']:7.1f} ms  "
                f"(p95 < 10: {verdict(lat['p95'] < t['audit_p95_ms'])})"
            )
        print(f"  {db} chain verified: {res['audit'][db]['chain_verified']}")
    print(f"\nwrote {RESULTS.relative_to(ROOT)} in {res['elapsed_s']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--poll-s", type=float, default=1.0, help="/progress poll interval (htmx: every 1s)")
    parser.add_argument("--levels", default="1:40,8:120,32:256", help="concurrency:launches,…")
    parser.add_argument("--per-patient", default="1:20,8:48", help="concurrency:launches for median / largest")
    parser.add_argument("--audit", default="1:600,4:1200,8:1600", help="threads:events,…")
    args = parser.parse_args(argv)

    def pairs(spec: str) -> list[tuple[int, int]]:
        return [(int(a), int(b)) for a, b in (p.split(":") for p in spec.split(","))]

    started = time.perf_counter()
    redis.Redis.from_url(REDIS_URL).flushdb()
    pg_url = create_pg_database("scr_loadbench")
    audit_pg = None
    res: dict = {}
    codes: dict = {}
    try:
        with tempfile.TemporaryDirectory(prefix="scr-loadbench-") as tmp:
            dep = Deployment(Path(tmp), pg_url, args.workers, args.threads)
            try:
                dep.start()
                chosen, sizes = pick_patients(dep.dataset)
                dep.set_latency(args.latency_ms)
                res = {
                    "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                    "machine": machine(),
                    "setup": {
                        "workers": args.workers,
                        "threads": args.threads,
                        "worker_pids": dep.worker_pids(),
                        "gunicorn": "gunicorn.conf.py (gthread, preload_app=False, max_requests=5000±500)",
                        "redis": REDIS_URL,
                        "postgresql": pg_url.rsplit("/", 1)[0] + "/<temporary database>",
                        "latency_ms": args.latency_ms,
                        "poll_s": args.poll_s,
                        "user": USER,
                        "sandbox": "python -m sandbox.serve --only sandbox (one process, same 2 cores)",
                    },
                    "targets": TARGETS,
                }
                # The mix: every patient the gp holds, opened once each (also warms both workers); only those
                # that reach the summary without a reason or break-glass stay in.
                candidates = sorted(
                    (
                        p
                        for p in dep.dataset.patients.values()
                        if "gp" in p.ids and p.nhs_number not in NEEDS_BREAK_GLASS
                    ),
                    key=lambda p: p.nhs_number,
                )
                pre = run_level(dep, "preflight", [p.nhs_number for p in candidates], 4, len(candidates), args.poll_s)
                refused = {r["nhs"]: r["error"] for r in pre["errors"]}
                mix = [p.nhs_number for p in candidates if p.nhs_number not in refused]
                random.Random(42).shuffle(mix)
                res["mix"] = {nhs: sizes[nhs] for nhs in mix}
                res["mix_excluded"] = refused
                res["patients"] = {
                    k: {"nhs": p.nhs_number, "resources": sizes[p.nhs_number]} for k, p in chosen.items()
                }
                for key in ("median", "largest"):
                    if chosen[key].nhs_number not in mix:
                        raise SystemExit(f"{key} patient {chosen[key].nhs_number} is not openable: {refused}")
                res["levels"] = [run_level(dep, f"c={c}", mix, c, n, args.poll_s) for c, n in pairs(args.levels)]
                res["per_patient"] = {
                    key: [
                        run_level(dep, f"{key} c={c}", [chosen[key].nhs_number], c, n, args.poll_s)
                        for c, n in pairs(args.per_patient)
                    ]
                    for key in ("median", "largest")
                }
                for lv in res["levels"]:
                    lv["cpu_allowance"] = cpu_allowance(lv, os.cpu_count())
                res["throughput_vs_cpu"] = next(lv for lv in res["levels"] if lv["concurrency"] == 8)["cpu_allowance"]
                res["viewer_audit_chain"] = {"ok": None}
            finally:
                codes = dep.stop()
                res["exit_codes"] = codes
            viewer_chain = AuditStore(pg_url).verify()
            res["viewer_audit_chain"] = {"ok": viewer_chain.ok, "checked": viewer_chain.checked}
            # 4. audit appends, with the viewer and the sandbox stopped
            audit_pg = create_pg_database("scr_auditbench")
            res["audit"] = {
                "postgresql": bench_audit(audit_pg, pairs(args.audit)),
                "sqlite": bench_audit(f"sqlite:///{tmp}/audit-bench.sqlite3", pairs(args.audit)),
            }
    finally:
        for url in (pg_url, audit_pg):
            if url:
                drop_pg_database(url)
        redis.Redis.from_url(REDIS_URL).flushdb()
    res["elapsed_s"] = round(time.perf_counter() - started, 1)
    RESULTS.write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print_report(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
