"""Launch benchmark: the whole SMART launch over real HTTP, every party remote behind its own latency proxy.

Run from the repository root (PostgreSQL and Redis running locally, the Synthea set at ../shared/data/synthea)::

    .venv/bin/python -m bench.launch_bench [--rounds 7] [--c8-launches 40] [--delay-ms 50] [--workers 2]

Starts, all on free loopback ports:

- the sandbox's authorisation server and EHR (``python -m sandbox.serve --only sandbox``) in one process, and
  each organisation's FHIR server (``… --orgs gp`` etc.) in a process of its own, all sharing the signing keys
  (``SANDBOX_KEYS_FILE``) and the map of proxied origins (``SANDBOX_ORG_URLS``);
- one ``bench.proxy`` process per party (authorisation server, EHR, gp, hospital, community, council), each
  adding a 50 ms round trip to every request it forwards and logging every exchange;
- the viewer in production mode: gunicorn with ``gunicorn.conf.py``, Redis (own key prefix) and PostgreSQL (own
  database), configured by a generated TOML whose [[ehr]] issuers and [[source]] base URLs are the proxies.

Then, in one run: interleaved rounds of C=1 launches of the median-size and the largest patient (EHR launch page
→ summary complete, as a browser), each followed by a sequential replay of the viewer's own requests for that
launch through the proxies; the floor of each launch from the proxies' logs; the viewer's CPU per launch
(gunicorn master + workers, /proc); C=8 for each patient (the largest last, so the worker RSS is read after at
least 40 launches of it); GC pauses in the workers (``SCR_GC_LOG`` hook in gunicorn.conf.py).

Prints a report and writes ``bench/launch_results.json``. See ``bench/README.md``, "Launch benchmark".
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import requests

from app.config import load_config
from bench.load_bench import (
    create_pg_database,
    drop_pg_database,
    machine_cpu_ms,
    named_cpu_ms,
    stop_process,
    tree_cpu_ms,
)
from bench.record_bench import SYNTHEA_DIR, free_port, machine, pick_patients, proc_status, summarise
from sandbox.dataset import load_dataset
from sandbox.keys import ServerKeys
from sandbox.serve import SANDBOX_CONFIG
from sandbox.settings import sandbox_settings
from tests.conftest import LoopbackCookieJar

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "launch_results.json"
GUNICORN = ROOT / ".venv" / "bin" / "gunicorn"
REDIS_URL = os.environ.get("SCR_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
ORGS = ("gp", "hospital", "community", "council")
PARTIES = ("auth", "ehr", *ORGS)
EHR_ORG = "gp"  # dr-patel works at Riverside: its FHIR server is the launching EHR's
USER = "dr-patel"
BROWSER_UA = "launch-bench-browser"
MARKER = "Allergies and adverse reactions"  # only on the complete summary page
START_TIMEOUT_S = 180
GC_LOG_MS = 2.0  # the workers log every collection at least this long
TARGETS = {
    "launch_over_floor": 1.25,
    "sequential_over_launch": 8.0,
    "viewer_cpu_ms_median": 60.0,
    "viewer_cpu_ms_largest": 150.0,
    "worker_rss_mb": 250.0,
    "gc_pause_in_launch_ms": 50.0,
    "c8_throughput_over_cpu_allowed": 0.80,
}


# ---- the deployment ---------------------------------------------------------------------------------------


def viewer_toml(proxies: dict[str, str]) -> str:
    """The sandbox configuration with every organisation's FHIR base at its own proxy; the EHR inbox (alert
    webhook) at the EHR's proxy. [sandbox] base_url stays ${SANDBOX_URL}: the authorisation server's proxy."""
    text = SANDBOX_CONFIG.read_text(encoding="utf-8")
    text = re.sub(r"\$\{SANDBOX_URL:-[^}]*\}/fhir/(\w+)", lambda m: f"{proxies[m.group(1)]}/fhir/{m.group(1)}", text)
    text = re.sub(r"\$\{SANDBOX_URL:-[^}]*\}/ehr/", f"{proxies['ehr']}/ehr/", text)
    return text


def git_commit() -> str:
    try:
        git = shutil.which("git") or "git"
        head = subprocess.run([git, "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()  # noqa: S603
        dirty = subprocess.run([git, "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout  # noqa: S603
        return head + (" (with uncommitted changes)" if dirty.strip() else "")
    except OSError:
        return "unknown"


def redis_delete_prefix(url: str, prefix: str) -> int:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    deleted = 0
    try:
        batch = list(client.scan_iter(match=f"{prefix}*", count=500))
        for i in range(0, len(batch), 500):
            deleted += client.delete(*batch[i : i + 500])
    finally:
        client.close()
    return deleted


class Deployment:
    def __init__(self, tmp: Path, pg_url: str, redis_prefix: str, args: argparse.Namespace) -> None:
        self.tmp, self.args = tmp, args
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs = []
        self.upstream = {name: free_port() for name in ("main", *ORGS)}
        self.proxy_port = {party: free_port() for party in PARTIES}
        self.proxy_url = {party: f"http://127.0.0.1:{port}" for party, port in self.proxy_port.items()}
        self.viewer_url = f"http://127.0.0.1:{free_port()}"
        (tmp / "metrics").mkdir()
        config = tmp / "viewer.toml"
        config.write_text(viewer_toml(self.proxy_url), encoding="utf-8")
        self.gc_log = tmp / "gc.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SCR_")},
            "SCR_CONFIG": str(config),
            "SANDBOX_URL": self.proxy_url["auth"],  # issuer, authorize and token endpoints
            "SANDBOX_ORG_URLS": ",".join(f"{org}={self.proxy_url[org]}" for org in ORGS),
            "SANDBOX_KEYS_FILE": str(tmp / "sandbox-signing-keys.json"),
            "VIEWER_URL": self.viewer_url,
            "SCR_KEYS_FILE": str(tmp / "viewer-keys.json"),
            "SCR_AUDIT_SQLITE": str(tmp / "unused.sqlite3"),
            "SCR_SYNTHEA_DIR": str(SYNTHEA_DIR),
            "SCR_DATABASE_URL": pg_url,
            "REDIS_URL": REDIS_URL,
            "SCR_REDIS_PREFIX": redis_prefix,
            "SCR_SECRET_KEY": f"bench-{uuid.uuid4().hex}",
            "WEB_CONCURRENCY": str(args.workers),
            "GUNICORN_THREADS": str(args.threads),
            "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"),
            "SCR_GC_LOG": str(self.gc_log),
            "SCR_GC_LOG_MS": str(GC_LOG_MS),
            "PYTHONPATH": str(ROOT),
        }
        self.config = load_config(config, env=self.env)
        ServerKeys.shared(self.env["SANDBOX_KEYS_FILE"])  # written once, before any sandbox process reads it

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = (self.tmp / f"{name}.log").open("w")
        self.logs.append(log)
        proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, text=True)  # noqa: S603
        self.procs[name] = proc
        return proc

    def start(self) -> None:
        py = sys.executable
        self._spawn(
            "sandbox-main",
            [py, "-m", "sandbox.serve", "--only", "sandbox", "--listen", f"127.0.0.1:{self.upstream['main']}"],
        )
        for org in ORGS:
            self._spawn(
                f"sandbox-{org}",
                [
                    py,
                    "-m",
                    "sandbox.serve",
                    "--only",
                    "sandbox",
                    "--orgs",
                    org,
                    "--listen",
                    f"127.0.0.1:{self.upstream[org]}",
                ],
            )
        for party in PARTIES:
            up = self.upstream["main" if party in ("auth", "ehr") else party]
            self._spawn(
                f"proxy-{party}",
                [
                    py,
                    "-m",
                    "bench.proxy",
                    "--listen",
                    f"127.0.0.1:{self.proxy_port[party]}",
                    "--upstream",
                    f"127.0.0.1:{up}",
                    "--delay-ms",
                    str(self.args.delay_ms),
                    "--log",
                    str(self.proxy_log(party)),
                ],
            )
        # Sizing only (which patients are median / largest), while the sandbox processes load the same data.
        dataset = load_dataset(sandbox_settings(self.config))
        self.chosen, self.sizes = pick_patients(dataset)
        self.chosen = {k: {"nhs": p.nhs_number, "resources": self.sizes[p.nhs_number]} for k, p in self.chosen.items()}
        del dataset
        gc.collect()
        self._wait_http(f"http://127.0.0.1:{self.upstream['main']}/auth/jwks", "sandbox-main")
        for org in ORGS:
            self._wait_http(f"http://127.0.0.1:{self.upstream[org]}/fhir/{org}/metadata", f"sandbox-{org}")
        bind = self.viewer_url.removeprefix("http://")
        self._spawn("viewer", [str(GUNICORN), "--config", "gunicorn.conf.py", "--bind", bind, "app:create_app()"])
        self._wait_http(f"{self.viewer_url}/readyz", "viewer", ok_only=True)

    def _wait_http(self, url: str, name: str, ok_only: bool = False) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                break
            try:
                code = requests.get(url, timeout=2).status_code
                if code == 200 or (not ok_only and code < 500):
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{name} did not come up at {url}:\n{(self.tmp / f'{name}.log').read_text()[-3000:]}")

    def proxy_log(self, party: str) -> Path:
        return self.tmp / f"proxy-{party}.jsonl"

    def proxy_entries(self, since: float, until: float) -> dict[str, list[dict]]:
        out = {}
        for party in PARTIES:
            rows = []
            path = self.proxy_log(party)
            if path.exists():
                for line in path.read_text(encoding="utf-8").splitlines():
                    row = json.loads(line)
                    if since <= row["t"] <= until:
                        rows.append(row)
            out[party] = rows
        return out

    def worker_pids(self) -> list[int]:
        viewer = self.procs["viewer"].pid
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(stat[1]) == viewer:
                    pids.append(int(entry.name))
        return sorted(pids)

    def viewer_cpu_ms(self) -> float:
        return tree_cpu_ms(self.procs["viewer"].pid)

    def cpu_sample(self) -> dict:
        busy, total = machine_cpu_ms()
        return {
            "viewer": self.viewer_cpu_ms(),
            "fhir_and_auth_servers": sum(tree_cpu_ms(p.pid) for n, p in self.procs.items() if n.startswith("sandbox")),
            "proxies": sum(tree_cpu_ms(p.pid) for n, p in self.procs.items() if n.startswith("proxy")),
            "bench_client": time.process_time() * 1000,
            "postgres_redis": named_cpu_ms(("postgres", "redis-server")),
            "machine_busy": busy,
            "machine_total": total,
        }

    def stop(self) -> dict[str, int | None]:
        codes = {}
        for name in ["viewer", *[n for n in self.procs if n != "viewer"]]:
            if name in self.procs:
                codes[name] = stop_process(self.procs[name])
        for log in self.logs:
            log.close()
        return codes


# ---- one launch, as a browser ------------------------------------------------------------------------------


def new_browser() -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.cookies = LoopbackCookieJar()
    s.headers["User-Agent"] = BROWSER_UA
    return s


def hop_name(dep: Deployment, url: str) -> str:
    parts = urlsplit(url)
    origin = f"{parts.scheme}://{parts.netloc}"
    server = next((p for p, u in dep.proxy_url.items() if u == origin), "viewer")
    path = re.sub(r"^/r/[^/]+/", "/r/<ctx>/", parts.path)
    return f"{server} {path}"


def launch(dep: Deployment, nhs: str, poll_s: float) -> dict:
    """GET /ehr/launch at the EHR's proxy; every redirect followed one at a time; if the first record page is
    the loading page, poll /progress every ``poll_s`` (htmx: every 1s) until HX-Refresh, then the page again.
    Wall time from the first request to the complete summary page."""
    http = new_browser()
    hops: list[tuple[str, float]] = []
    polls, loading, error = 0, False, None
    wall0, t0 = time.time(), time.perf_counter()
    try:
        url = f"{dep.proxy_url['ehr']}/ehr/launch?{urlencode({'user': USER, 'patient': nhs})}"
        for _ in range(12):
            h0 = time.perf_counter()
            resp = http.get(url, allow_redirects=False, timeout=60)
            hops.append((hop_name(dep, url), (time.perf_counter() - h0) * 1000))
            if resp.status_code not in (301, 302, 303, 307, 308):
                break
            url = urljoin(url, resp.headers["Location"])
        found = re.search(r"/r/([^/]+)/$", urlsplit(url).path)
        if resp.status_code == 200 and found and MARKER not in resp.text and 'id="sources"' in resp.text:
            loading = True
            while time.perf_counter() - t0 < 60:
                time.sleep(poll_s)
                polls += 1
                h0 = time.perf_counter()
                prog = http.get(f"{url}progress", headers={"HX-Request": "true", "HX-Current-URL": url}, timeout=60)
                hops.append(("viewer /r/<ctx>/progress", (time.perf_counter() - h0) * 1000))
                if prog.headers.get("HX-Refresh") == "true" or prog.headers.get("HX-Redirect"):
                    break
            h0 = time.perf_counter()
            resp = http.get(url, timeout=60)
            hops.append(("viewer /r/<ctx>/ (reload)", (time.perf_counter() - h0) * 1000))
        if resp.status_code != 200 or MARKER not in resp.text:
            error = f"{resp.status_code} at {hop_name(dep, resp.url)}"
    except requests.RequestException as exc:
        error = f"{exc.__class__.__name__}: {exc}"
    finally:
        http.close()
    ms = (time.perf_counter() - t0) * 1000
    return {
        "nhs": nhs,
        "ms": ms,
        "t0": wall0,
        "t1": wall0 + ms / 1000,
        "hops": hops,
        "loading": loading,
        "polls": polls,
        "error": error,
    }


# ---- the floor and the sequential replay, from the proxies' logs ------------------------------------------


def resource_type(target: str, org: str) -> str | None:
    path = urlsplit(target).path.removeprefix(f"/fhir/{org}/")
    return path.split("/", 1)[0] if path and not path.startswith((".well-known", "metadata")) else None


def search_key(target: str) -> tuple[str, tuple]:
    """A search without its paging parameters: the pages of one search share it."""
    parts = urlsplit(target)
    params = tuple(sorted((k, v) for k, v in parse_qsl(parts.query) if k not in ("_offset", "_count")))
    return parts.path, params


def org_chain(rows: list[dict], org: str, cost) -> dict:
    """The organisation's longest chain of dependent requests, from what each request needs and when it was
    sent: a search by the patient's logical id (``patient=<id>``) needs the Patient search first; a page of a
    search needs the earlier pages of the same search that had finished before it was sent (pages the viewer
    asks for in parallel do not chain). Searches by NHS number (``patient.identifier``) need nothing."""
    rows = sorted((r for r in rows if r["method"] == "GET" and resource_type(r["target"], org)), key=lambda r: r["t"])
    patient_search = [r for r in rows if resource_type(r["target"], org) == "Patient"]
    chain: dict[int, tuple[float, int, str]] = {}  # id(row) → (ms, round trips, what)
    for r in rows:
        rtype = resource_type(r["target"], org)
        preds = []
        query = dict(parse_qsl(urlsplit(r["target"]).query))
        if rtype != "Patient" and "patient" in query:
            preds += [p for p in patient_search if p["t"] < r["t"]]
        key = search_key(r["target"])
        preds += [
            p
            for p in rows
            if p is not r
            and search_key(p["target"]) == key
            and p["t"] + (p["delay_ms"] + p["server_ms"]) / 1000 <= r["t"]
        ]
        best = max((chain[id(p)] for p in preds if id(p) in chain), default=(0.0, 0, ""), key=lambda c: c[0])
        chain[id(r)] = (best[0] + cost(r), best[1] + 1, f"{best[2]} → {rtype}" if best[2] else rtype)
    ms, trips, what = max(chain.values(), default=(0.0, 0, "no requests"), key=lambda c: c[0])
    return {"ms": round(ms, 1), "round_trips": trips, "longest": what, "requests": len(rows)}


def floor_of(dep: Deployment, entries: dict[str, list[dict]], delay_ms: float) -> dict:
    """authorize (browser) + token exchange + EHR Patient read + the slowest organisation's chain; each
    request one ``delay_ms`` round trip plus its server time as the proxy measured it."""

    def cost(row: dict) -> float:
        return delay_ms + row["server_ms"]

    viewer = {p: [r for r in rows if "error" not in r and r.get("ua") != BROWSER_UA] for p, rows in entries.items()}
    browser_auth = [r for r in entries["auth"] if r.get("ua") == BROWSER_UA and "/auth/authorize" in r["target"]]
    tokens = [r for r in viewer["auth"] if r["method"] == "POST" and r["target"].startswith("/auth/token")]
    code_exchange = [r for r in tokens if r.get("grant") == "authorization_code"]
    ehr_read = [
        r for r in viewer[EHR_ORG] if re.fullmatch(rf"/fhir/{EHR_ORG}/Patient/[^/?]+", urlsplit(r["target"]).path)
    ]
    parts = {
        "authorize": cost(browser_auth[0]) if browser_auth else None,
        "token_exchange": cost(code_exchange[0]) if code_exchange else None,
        "ehr_patient_read": cost(ehr_read[0]) if ehr_read else None,
    }
    chains = {org: org_chain([r for r in viewer[org] if r not in ehr_read], org, cost) for org in ORGS}
    slowest = max(chains, key=lambda o: chains[o]["ms"])
    missing = [k for k, v in parts.items() if v is None]
    total = sum(v for v in parts.values() if v is not None) + chains[slowest]["ms"]
    uncounted = [
        f"{p} {r['method']} {urlsplit(r['target']).path}"
        for p, rows in viewer.items()
        for r in rows
        if (p == "auth" and r not in code_exchange) or (p in ORGS and resource_type(r["target"], p) is None)
    ]
    return {
        "ms": round(total, 1),
        "parts_ms": {k: round(v, 1) if v is not None else None for k, v in parts.items()},
        "slowest_org": slowest,
        "chains": chains,
        "missing": missing,
        "other_viewer_requests": uncounted,  # discovery, JWKS, backend tokens, webhooks: not in the floor
        "ehr_launch_page_ms": round(cost(entries["ehr"][0]), 1) if entries["ehr"] else None,
    }


def replay(dep: Deployment, entries: dict[str, list[dict]], delay_ms: float) -> dict:
    """The viewer's requests for one launch, one after another through the same proxies: GETs replayed with
    their own headers (same tokens); POSTs (single-use code, one-time client assertion jti, webhooks) are not
    replayable and count at their recorded round trip + server time."""
    rows = sorted(
        ((p, r) for p, rs in entries.items() for r in rs if "error" not in r and r.get("ua") != BROWSER_UA),
        key=lambda pr: pr[1]["t"],
    )
    http = requests.Session()
    http.trust_env = False
    statuses: dict[int, int] = {}
    posts_ms = 0.0
    t0 = time.perf_counter()
    for party, row in rows:
        if row["method"] != "GET":
            posts_ms += delay_ms + row["server_ms"]
            continue
        headers = {k: v for k, v in row.get("headers", []) if k.lower() not in ("host", "content-length")}
        resp = http.get(dep.proxy_url[party] + row["target"], headers=headers, timeout=60)
        statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
    wall = (time.perf_counter() - t0) * 1000
    http.close()
    return {
        "ms": round(wall + posts_ms, 1),
        "gets_replayed": sum(statuses.values()),
        "get_statuses": statuses,
        "posts_counted": sum(1 for _, r in rows if r["method"] != "GET"),
        "posts_ms": round(posts_ms, 1),
    }


# ---- phases --------------------------------------------------------------------------------------------------


def interleaved(dep: Deployment, rounds: int, poll_s: float, delay_ms: float) -> dict:
    """Per round: median then largest (reversed every other round), each a C=1 launch with its viewer CPU,
    then the sequential replay of that launch's requests."""
    out = {key: {"launches": [], "floors": [], "replays": [], "cpu_ms": []} for key in dep.chosen}
    for rnd in range(rounds):
        order = list(dep.chosen) if rnd % 2 == 0 else list(reversed(dep.chosen))
        for key in order:
            nhs = dep.chosen[key]["nhs"]
            time.sleep(0.3)  # nothing of the previous step left in flight
            cpu0 = dep.viewer_cpu_ms()
            result = launch(dep, nhs, poll_s)
            time.sleep(0.2)  # the proxies have logged the last exchange
            cpu = dep.viewer_cpu_ms() - cpu0
            entries = dep.proxy_entries(result["t0"], result["t1"])
            out[key]["launches"].append(result)
            out[key]["cpu_ms"].append(cpu)
            out[key]["floors"].append(floor_of(dep, entries, delay_ms))
            out[key]["replays"].append(replay(dep, entries, delay_ms))
            print(
                f"  round {rnd + 1} {key:<8} launch {result['ms']:7.0f} ms  floor {out[key]['floors'][-1]['ms']:6.0f}"
                f"  sequential {out[key]['replays'][-1]['ms']:7.0f}  viewer CPU {cpu:5.0f} ms"
                f"{'  ERROR ' + result['error'] if result['error'] else ''}",
                flush=True,
            )
    return out


def concurrent(dep: Deployment, nhs: str, concurrency: int, n: int, poll_s: float) -> dict:
    """``n`` launches of one patient with ``concurrency`` in flight (closed loop)."""
    results: list[dict] = []
    lock = threading.Lock()
    left = [n]

    def worker() -> None:
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            out = launch(dep, nhs, poll_s)
            with lock:
                results.append(out)

    time.sleep(0.5)
    c0 = dep.cpu_sample()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall_s = time.perf_counter() - t0
    time.sleep(0.3)
    c1 = dep.cpu_sample()
    cpu = {k: c1[k] - c0[k] for k in c0}
    cpu["other"] = cpu["machine_busy"] - sum(
        cpu[k] for k in ("viewer", "fhir_and_auth_servers", "proxies", "bench_client", "postgres_redis")
    )
    ok = [r for r in results if not r["error"]]
    return {
        "concurrency": concurrency,
        "launches": n,
        "errors": [r["error"] for r in results if r["error"]],
        "wall_s": round(wall_s, 2),
        "launches_per_s": round(len(ok) / wall_s, 3),
        "launch_ms": summarise([r["ms"] for r in ok]) if ok else None,
        "cpu_ms_per_launch": {k: round(v / n, 1) for k, v in cpu.items() if k != "machine_total"},
        "cores_used": {k: round(v / (wall_s * 1000), 2) for k, v in cpu.items() if k != "machine_total"},
        "launches_window": [(r["t0"], r["t1"]) for r in results],
    }


def cpu_allowance(level: dict, cores: int) -> dict:
    """Throughput against what the viewer's own CPU per launch allows: on the cores left to it (all cores
    minus what the FHIR/auth servers, proxies, this client, PostgreSQL/Redis and the rest of the box used during
    the level) and on every core (production: the other parties are other machines)."""
    per = level["cpu_ms_per_launch"]["viewer"]
    used = level["cores_used"]
    others = sum(used[k] for k in ("fhir_and_auth_servers", "proxies", "bench_client", "postgres_redis"))
    others += max(used["other"], 0.0)
    available = max(cores - others, 0.01)
    allowed = available * 1000 / per if per else float("inf")
    tput = level["launches_per_s"]
    return {
        "viewer_cpu_ms_per_launch": per,
        "cores_used_by_others": round(others, 2),
        "cores_available_to_viewer": round(available, 2),
        "cpu_allowed_launches_per_s": round(allowed, 2),
        "throughput_over_cpu_allowed": round(tput / allowed, 2),
        "cpu_allowed_all_cores_per_s": round(cores * 1000 / per, 2) if per else None,
        "throughput_over_all_cores": round(tput / (cores * 1000 / per), 2) if per else None,
        "concurrency_bound_launches_per_s": round(level["concurrency"] * 1000 / level["launch_ms"]["median"], 2),
    }


def gc_pauses(dep: Deployment, windows: dict[str, list[tuple[float, float]]]) -> dict:
    """The workers' logged collections: wall pause and the collecting thread's CPU, overall and inside the
    launches of each concurrency (``windows``: "c1" for every one-at-a-time launch, "c8" for the concurrent
    level, where the box's two cores are shared by the viewer's threads and eleven other processes)."""
    rows = []
    if dep.gc_log.exists():
        for line in dep.gc_log.read_text().splitlines():
            pid, start, gen, ms, cpu = line.split()
            rows.append({"pid": int(pid), "t": float(start), "gen": int(gen), "ms": float(ms), "cpu_ms": float(cpu)})
    limit = TARGETS["gc_pause_in_launch_ms"]
    out = {
        "logged_at_least_ms": GC_LOG_MS,
        "logged": len(rows),
        "max_ms": round(max((r["ms"] for r in rows), default=0.0), 1),
        "max_cpu_ms": round(max((r["cpu_ms"] for r in rows), default=0.0), 1),
    }
    everywhere = []
    for level, spans in windows.items():
        inside = [r for r in rows if any(a <= r["t"] <= b for a, b in spans)]
        everywhere += inside
        out[level] = {
            "max_inside_launch_ms": round(max((r["ms"] for r in inside), default=0.0), 1),
            "max_cpu_inside_launch_ms": round(max((r["cpu_ms"] for r in inside), default=0.0), 1),
            "over_50ms_inside_launch": sum(1 for r in inside if r["ms"] > limit),
            "cpu_over_50ms_inside_launch": sum(1 for r in inside if r["cpu_ms"] > limit),
            "gen2_inside_launch": sum(1 for r in inside if r["gen"] == 2),
        }
    out["max_inside_launch_ms"] = round(max((r["ms"] for r in everywhere), default=0.0), 1)
    out["over_50ms_inside_launch"] = sum(1 for r in everywhere if r["ms"] > limit)
    out["pauses"] = rows[-50:]
    return out


# ---- report ----------------------------------------------------------------------------------------------------


def per_patient_summary(data: dict) -> dict:
    ok = [i for i, r in enumerate(data["launches"]) if not r["error"]]
    launches = [data["launches"][i]["ms"] for i in ok]
    floors = [data["floors"][i]["ms"] for i in ok]
    replays = [data["replays"][i]["ms"] for i in ok]
    cpu = [data["cpu_ms"][i] for i in ok]
    if not ok:
        return {"errors": [r["error"] for r in data["launches"]]}
    p50 = statistics.median(launches)
    hops: dict[str, list[float]] = {}
    for i in ok:
        for name, ms in data["launches"][i]["hops"]:
            hops.setdefault(name, []).append(ms)
    return {
        "launch_ms": summarise(launches),
        "floor_ms": summarise(floors),
        "launch_p50_over_floor_p50": round(p50 / statistics.median(floors), 2),
        "launch_p95_over_floor_p50": round(summarise(launches)["p95"] / statistics.median(floors), 2),
        "sequential_ms": summarise(replays),
        "sequential_over_launch": round(statistics.median(replays) / p50, 1),
        "viewer_cpu_ms": summarise(cpu) | {"mean": round(statistics.fmean(cpu), 1)},
        "hops_median_ms": {k: round(statistics.median(v), 1) for k, v in hops.items()},
        "via_loading_page": sum(data["launches"][i]["loading"] for i in ok),
        "errors": [r["error"] for r in data["launches"] if r["error"]],
        "floor_example": data["floors"][ok[-1]],
        "replay_example": data["replays"][ok[-1]],
    }


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_report(res: dict, output: Path) -> None:
    t = TARGETS
    print(f"\nLaunch benchmark {res['date']}  commit {res['commit']}")
    print(f"machine: {res['machine']['cpus']} CPUs, {res['machine']['cpu']}; load before start {res['loadavg_start']}")
    s = res["setup"]
    print(
        f"viewer: gunicorn {s['workers']} workers x {s['threads']} threads; every party behind a "
        f"{s['delay_ms']:.0f} ms proxy; {s['rounds']} interleaved rounds; C=8: {s['c8_launches']} launches each\n"
    )
    print(
        f"{'patient':<9}{'res':>6}{'p50':>8}{'p95':>8}{'floor':>8}{'p50/fl':>8}{'p95/fl':>8}{'seq':>8}"
        f"{'seq/p50':>8}{'CPU ms':>8}"
    )
    for key, p in res["per_patient"].items():
        if "launch_ms" not in p:
            print(f"{key:<9} all launches failed: {p['errors']}")
            continue
        print(
            f"{key:<9}{res['patients'][key]['resources']:>6}{p['launch_ms']['median']:>8.0f}{p['launch_ms']['p95']:>8.0f}"
            f"{p['floor_ms']['median']:>8.0f}{p['launch_p50_over_floor_p50']:>8.2f}{p['launch_p95_over_floor_p50']:>8.2f}"
            f"{p['sequential_ms']['median']:>8.0f}{p['sequential_over_launch']:>8.1f}{p['viewer_cpu_ms']['mean']:>8.0f}"
        )
    for key, p in res["per_patient"].items():
        if "launch_ms" not in p:
            continue
        f = p["floor_example"]
        print(f"  {key}: floor parts {f['parts_ms']} + slowest org {f['slowest_org']} {f['chains'][f['slowest_org']]}")
        print(
            f"  {key}: EHR launch page (not in the floor) {f['ehr_launch_page_ms']} ms; other viewer requests "
            f"(not in the floor): {f['other_viewer_requests'] or 'none'}"
        )
        print(f"  {key}: hops (median ms) " + ", ".join(f"{k} {v:.0f}" for k, v in p["hops_median_ms"].items()))
        target = t["viewer_cpu_ms_median" if key == "median" else "viewer_cpu_ms_largest"]
        print(
            f"  {key}: p50/floor <= {t['launch_over_floor']}: "
            f"{verdict(p['launch_p50_over_floor_p50'] <= t['launch_over_floor'])}"
            f"; sequential/launch >= {t['sequential_over_launch']}: "
            f"{verdict(p['sequential_over_launch'] >= t['sequential_over_launch'])}"
            f"; viewer CPU <= {target:.0f} ms: {verdict(p['viewer_cpu_ms']['mean'] <= target)}"
        )
    print("\nC=1 vs C=8 (launches/s, p50/p95 ms, viewer CPU ms per launch, throughput vs CPU-allowed)")
    for key, lv in res["concurrency"].items():
        for level in (lv["c1"], lv["c8"]):
            a = level.get("cpu_allowance", {})
            lm = level["launch_ms"] or {"median": float("nan"), "p95": float("nan")}
            print(
                f"  {key:<8} C={level['concurrency']}  {level['launches_per_s']:6.2f}/s  p50 {lm['median']:6.0f}"
                f"  p95 {lm['p95']:6.0f}  viewer CPU {level['cpu_ms_per_launch']['viewer']:6.1f}"
                + (
                    f"  {a['throughput_over_cpu_allowed']:.0%} of {a['cpu_allowed_launches_per_s']:.1f}/s on "
                    f"{a['cores_available_to_viewer']:.2f} free cores (all {res['machine']['cpus']} cores: "
                    f"{a['throughput_over_all_cores']:.0%}); target >= 80%: "
                    f"{verdict(a['throughput_over_cpu_allowed'] >= t['c8_throughput_over_cpu_allowed'])}"
                    if a
                    else ""
                )
                + (f"  errors {len(level['errors'])}" if level["errors"] else "")
            )
    r = res["worker_rss"]
    print(
        f"\nworker RSS after {r['largest_launches_before']} launches of the largest: "
        + ", ".join(f"pid {pid} {v['VmRSS']} MB (peak {v['VmHWM']})" for pid, v in r["workers"].items())
        + f"; target <= {t['worker_rss_mb']:.0f} MB: {verdict(r['max_mb'] <= t['worker_rss_mb'])}"
        + "; after the warm-up: "
        + ", ".join(f"{v['VmRSS']} MB" for v in r.get("after_warm_up", {}).values())
    )
    g = res["gc"]
    print(
        f"GC pauses (workers, logged >= {g['logged_at_least_ms']} ms): {g['logged']} logged, max {g['max_ms']} ms "
        f"(CPU {g['max_cpu_ms']} ms); inside launches max {g['max_inside_launch_ms']} ms, over 50 ms: "
        f"{g['over_50ms_inside_launch']} (target 0: {verdict(g['over_50ms_inside_launch'] == 0)})"
    )
    for level in ("c1", "c8"):
        w = g[level]
        print(
            f"  inside {level.upper()} launches: max {w['max_inside_launch_ms']} ms wall / "
            f"{w['max_cpu_inside_launch_ms']} ms CPU; over 50 ms: {w['over_50ms_inside_launch']} wall, "
            f"{w['cpu_over_50ms_inside_launch']} CPU; full collections: {w['gen2_inside_launch']}"
        )
    print(f"\nwrote {output} in {res['elapsed_s']:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved C=1 rounds (each: both patients)")
    parser.add_argument("--c8-launches", type=int, default=40, help="launches per patient at C=8")
    parser.add_argument("--concurrency", type=int, default=8, help="the concurrent level (default 8)")
    parser.add_argument("--c1-launches", type=int, default=10, help="launches per patient for the C=1 throughput")
    parser.add_argument("--delay-ms", type=float, default=50.0, help="round trip each proxy adds per request")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (WEB_CONCURRENCY)")
    parser.add_argument("--threads", type=int, default=16, help="threads per worker (GUNICORN_THREADS)")
    parser.add_argument("--poll-s", type=float, default=1.0, help="/progress poll interval (htmx: every 1s)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs) and print it")
    parser.add_argument("--output", default=str(RESULTS), help="results file")
    args = parser.parse_args(argv)
    output = Path(args.output).resolve()

    started = time.perf_counter()
    loadavg = Path("/proc/loadavg").read_text().split()[:3]
    prefix = f"scr-launchbench-{uuid.uuid4().hex[:10]}:"
    pg_url = create_pg_database("scr_launchbench")
    tmp = Path(tempfile.mkdtemp(prefix="scr-launchbench-"))
    res: dict = {}
    try:
        dep = Deployment(tmp, pg_url, prefix, args)
        try:
            dep.start()
            res = {
                "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "commit": git_commit(),
                "machine": machine(),
                "loadavg_start": loadavg,
                "setup": {
                    "rounds": args.rounds,
                    "c8_launches": args.c8_launches,
                    "c1_launches": args.c1_launches,
                    "concurrency": args.concurrency,
                    "delay_ms": args.delay_ms,
                    "workers": args.workers,
                    "threads": args.threads,
                    "poll_s": args.poll_s,
                    "user": USER,
                    "processes": {
                        "sandbox-main": "authorisation server + EHR (python -m sandbox.serve --only sandbox)",
                        **{f"sandbox-{o}": f"python -m sandbox.serve --only sandbox --orgs {o}" for o in ORGS},
                        **{f"proxy-{p}": f"bench.proxy +{args.delay_ms:.0f} ms per request" for p in PARTIES},
                        "viewer": "gunicorn --config gunicorn.conf.py app:create_app() (Redis + PostgreSQL)",
                    },
                    "redis": f"{REDIS_URL} (keys under {prefix}, deleted afterwards)",
                    "postgresql": "a temporary database of its own (dropped afterwards)",
                },
                "targets": TARGETS,
                "patients": dep.chosen,
            }
            print(f"patients: {dep.chosen}", flush=True)
            for key, p in dep.chosen.items():  # warm-up: discovery, backend tokens, pooled connections
                w = launch(dep, p["nhs"], args.poll_s)
                if w["error"]:
                    raise SystemExit(f"warm-up launch of the {key} patient failed: {w['error']}")
            warm_rss = {pid: proc_status(pid) for pid in dep.worker_pids()}  # the baseline the cache adds to
            print("interleaved C=1 rounds (launch, floor, sequential replay, viewer CPU):", flush=True)
            inter = interleaved(dep, args.rounds, args.poll_s, args.delay_ms)
            res["per_patient"] = {k: per_patient_summary(v) for k, v in inter.items()}
            res["samples"] = {
                k: {
                    "launch_ms": [round(r["ms"], 1) for r in v["launches"]],
                    "floor_ms": [f["ms"] for f in v["floors"]],
                    "sequential_ms": [r["ms"] for r in v["replays"]],
                    "viewer_cpu_ms": [round(c, 1) for c in v["cpu_ms"]],
                }
                for k, v in inter.items()
            }
            windows = {"c1": [(r["t0"], r["t1"]) for v in inter.values() for r in v["launches"]], "c8": []}
            res["concurrency"] = {}
            for key in ("median", "largest"):  # the largest last: RSS is read after its C=8 level
                nhs = dep.chosen[key]["nhs"]
                print(f"{key}: C=1 x {args.c1_launches}, C={args.concurrency} x {args.c8_launches}", flush=True)
                c1 = concurrent(dep, nhs, 1, args.c1_launches, args.poll_s)
                c8 = concurrent(dep, nhs, args.concurrency, args.c8_launches, args.poll_s)
                windows["c1"] += c1.pop("launches_window")
                windows["c8"] += c8.pop("launches_window")
                if c8["launch_ms"]:
                    c8["cpu_allowance"] = cpu_allowance(c8, os.cpu_count())
                res["concurrency"][key] = {"c1": c1, "c8": c8}
            time.sleep(1.0)
            workers = {pid: proc_status(pid) for pid in dep.worker_pids()}
            res["worker_rss"] = {
                "largest_launches_before": 1 + args.rounds + args.c1_launches + args.c8_launches,
                "workers": workers,
                "max_mb": max((v["VmRSS"] for v in workers.values()), default=0.0),
                "after_warm_up": warm_rss,
            }
            res["gc"] = gc_pauses(dep, windows)
        finally:
            res["exit_codes"] = dep.stop()
    finally:
        drop_pg_database(pg_url)
        res["redis_keys_deleted"] = redis_delete_prefix(REDIS_URL, prefix)
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    res["elapsed_s"] = round(time.perf_counter() - started, 1)
    output.write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print_report(res, output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
