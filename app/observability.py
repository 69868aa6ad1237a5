"""Operations: health and readiness, Prometheus metrics, structured JSON logs carrying the request id.

Metrics work across gunicorn workers through prometheus_client's multiprocess mode when
``PROMETHEUS_MULTIPROC_DIR`` is set (gunicorn.conf.py sets it up); otherwise per process. ``/metrics`` is not
public: with a token configured (``[viewer] metrics_token_env``, default ``SCR_METRICS_TOKEN``) it needs
``Authorization: Bearer <token>``; without one it answers only direct loopback requests (no proxy header),
and 404 to everyone else. Log lines never contain a raw CR or LF (a forged log line is one way to hide).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, abort, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

REQUESTS = Counter("scr_http_requests_total", "HTTP requests served", ["endpoint", "method", "status"])
LATENCY = Histogram(
    "scr_http_request_seconds",
    "HTTP request latency",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SOURCE_LATENCY = Histogram(
    "scr_source_fetch_seconds",
    "Time to read one organisation's record",
    ["source"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
)
SOURCE_OUTCOMES = Counter("scr_source_fetch_total", "Organisation fetches by outcome", ["source", "state"])
AUDIT_WRITES = Counter("scr_audit_writes_total", "Audit events written", ["kind", "result"])
AUDIT_LATENCY = Histogram(
    "scr_audit_write_seconds", "Audit write latency", buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
)
DECISIONS = Counter("scr_access_decisions_total", "Access decisions by outcome", ["outcome"])


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id (when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            out["request_id"] = request_id
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def escape_line(text: str) -> str:
    """One log record, one line: CR and LF (and other line breaks) shown escaped."""
    return text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n").replace("\u2028", "\\u2028")


class PlainFormatter(logging.Formatter):
    """The human-readable format, with the message escaped onto one line (tracebacks still follow it)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = escape_line(record.message)
        return super().formatMessage(record)


class RequestIdFilter(logging.Filter):
    """Adds the current request's id to records logged while handling it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            try:
                record.request_id = g.get("request_id")
            except RuntimeError:  # outside a request (fetch threads pass request_id themselves)
                record.request_id = None
        return True


def configure_logging(json_logs: bool) -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(
        JsonFormatter()
        if json_logs
        else PlainFormatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s")
    )
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("SCR_LOG_LEVEL", "INFO"))
    logging.getLogger("werkzeug").setLevel(logging.WARNING)


def install_operations(app: Flask, audit_store: Callable[[], Any], state_store: Callable[[], Any]) -> None:
    """``audit_store``/``state_store`` return the stores /readyz checks (read at each check, so a test can
    swap one)."""

    @app.before_request
    def _start_timer():
        g.started = time.perf_counter()

    @app.after_request
    def _count(resp):
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        if endpoint != "/metrics":
            REQUESTS.labels(endpoint, request.method, str(resp.status_code)).inc()
            LATENCY.labels(endpoint).observe(time.perf_counter() - g.get("started", time.perf_counter()))
        return resp

    @app.get("/healthz")
    def healthz():
        """The process is alive and serving."""
        return jsonify(status="ok")

    @app.get("/readyz")
    def readyz():
        """Ready for traffic: configuration loaded, audit store and shared state reachable."""
        checks = {"config": bool(app.config.get("SCR"))}
        try:
            with audit_store().engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
            checks["audit_store"] = True
        except Exception:  # noqa: BLE001 - any failure means not ready
            checks["audit_store"] = False
        state = state_store()
        if hasattr(state, "ping"):
            checks["redis"] = state.ping()
        ready = all(checks.values())
        return jsonify(status="ready" if ready else "not ready", checks=checks), 200 if ready else 503

    @app.get("/metrics")
    def metrics():
        _metrics_allowed(app.config["SCR"].viewer.metrics_token)
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
        return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)


LOOPBACK = ("127.0.0.1", "::1")
PROXY_HEADERS = ("X-Forwarded-For", "X-Real-Ip", "Forwarded")


def _metrics_allowed(token: str | None) -> None:
    if token:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            abort(401)
        return
    direct = not any(request.headers.get(h) for h in PROXY_HEADERS)
    if request.remote_addr not in LOOPBACK or not direct:
        abort(404)  # say nothing about what is here
