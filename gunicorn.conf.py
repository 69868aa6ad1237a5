"""gunicorn settings for the viewer (used by the Procfile): many threads per worker for the fan-out.

Each request that gathers a record waits on up to four organisations at once, mostly idle on the network,
so gthread workers with several threads keep the cores busy; pools, sessions and database engines are
created lazily in each worker after fork (never preloaded with open connections: pitfall H2).
"""

import gc
import multiprocessing
import os
import shutil
import sys
import tempfile

bind = os.environ.get("BIND", f"0.0.0.0:{os.environ.get('PORT', '8000')}")
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2))
threads = int(os.environ.get("GUNICORN_THREADS", "16"))  # request threads mostly wait on FHIR servers
timeout = 60  # a record takes at most the slowest source's deadline (5 s) plus rendering; 60 s is a hang
graceful_timeout = 30  # SIGTERM: finish in-flight requests, then exit
keepalive = 5
# Request size limits (gunicorn answers 400 beyond them; the app itself refuses bodies over 64 KB with 413 and
# header lines over 8 KB with 431, so the single-process server behaves the same).
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190
max_requests = 5000  # recycle workers now and then: bounds any slow growth of the per-worker caches
max_requests_jitter = 500
preload_app = False
accesslog = None  # the app logs structured JSON lines with the request id instead
errorlog = "-"
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
os.environ.setdefault("SCR_LOG_FORMAT", "json")

# Prometheus metrics across workers: a fresh shared directory per server start.
_OWN_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
if _OWN_METRICS_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="scr-metrics-")


def on_starting(server):
    # Refuse before any worker starts, with the configuration's own message (no SCR_CONFIG, unknown key…),
    # instead of every worker failing to boot. The source check's connections are reset after the fork (core.http).
    from app.config import ConfigError, load_config
    from app.startup import check_sources

    try:
        check_sources(load_config())  # a source without any way to find its token endpoint stops the start
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr, flush=True)
        on_exit(server)
        sys.exit(2)
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)


def post_fork(server, worker):
    from app.observability import configure_logging

    configure_logging(json_logs=os.environ.get("SCR_LOG_FORMAT") == "json")
    if os.environ.get("SCR_GC_LOG"):  # opt-in (bench/launch_bench.py): log this worker's long GC pauses
        _log_gc_pauses(os.environ["SCR_GC_LOG"], float(os.environ.get("SCR_GC_LOG_MS", "50")))


def _log_gc_pauses(path, threshold_ms):
    """Append ``pid start_epoch_s generation pause_ms cpu_ms`` to ``path`` for every collection of at least
    ``threshold_ms``, from a ``gc.callbacks`` hook (one short O_APPEND write per logged pause). ``pause_ms`` is
    wall time (what a request waits: the collector holds the GIL); ``cpu_ms`` is the collecting thread's CPU
    time, so a pause stretched by the OS running other processes on a busy machine can be told apart."""
    import time

    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    started = [0.0, 0.0, 0.0]

    def on_gc(phase, info):
        if phase == "start":
            started[:] = time.time(), time.perf_counter(), time.thread_time()
            return
        ms = (time.perf_counter() - started[1]) * 1000
        if ms >= threshold_ms:
            cpu = (time.thread_time() - started[2]) * 1000
            os.write(fd, f"{os.getpid()} {started[0]:.6f} {info['generation']} {ms:.3f} {cpu:.3f}\n".encode())

    gc.callbacks.append(on_gc)


def post_worker_init(worker):
    from app.runtime import tune_gc

    tune_gc()  # after the app is loaded: the same GC settings as python -m app and make run (app/runtime.py)


def on_exit(server):
    if _OWN_METRICS_DIR:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
