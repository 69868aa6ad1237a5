"""Health, readiness, metrics and structured logs of a running viewer."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

from app.audit.store import AuditStore
from app.observability import JsonFormatter, RequestIdFilter
from app.services import install, services


def test_healthz_and_readyz(http, sandbox):
    assert http.get(f"{sandbox.viewer_url}/healthz").json() == {"status": "ok"}
    ready = http.get(f"{sandbox.viewer_url}/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"config": True, "audit_store": True}


def test_readyz_fails_when_the_audit_store_is_gone(http, sandbox):
    app = sandbox.viewer_app
    original = services(app)
    install(app, replace(original, audit_store=AuditStore("sqlite:////proc/nowhere/audit.sqlite3")))
    try:
        ready = http.get(f"{sandbox.viewer_url}/readyz")
    finally:
        install(app, original)
    assert ready.status_code == 503 and ready.json()["checks"]["audit_store"] is False


def test_metrics_after_a_launch(http, sandbox):
    http.get(f"{sandbox.sandbox_url}/ehr/launch", params={"user": "dr-patel", "patient": "9991000372"})
    text = http.get(f"{sandbox.viewer_url}/metrics").text
    for name in (
        "scr_http_requests_total",
        "scr_http_request_seconds_bucket",
        "scr_source_fetch_seconds_bucket",
        "scr_source_fetch_total",
        "scr_audit_writes_total",
        "scr_audit_write_seconds_bucket",
        "scr_access_decisions_total",
    ):
        assert name in text, name
    assert 'scr_access_decisions_total{outcome="permit"}' in text
    assert 'scr_source_fetch_total{source="council",state="loaded"}' in text


def test_json_log_lines_carry_the_request_id():
    record = logging.LogRecord(
        "app.record.fetch", logging.INFO, __file__, 1, "GET %s -> %s", ("http://x/Patient", 200), None
    )
    record.request_id = "req-123"
    RequestIdFilter().filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "GET http://x/Patient -> 200" and line["request_id"] == "req-123"
    assert line["level"] == "INFO" and line["ts"].endswith("Z")


def test_help_page_explains_the_record_and_gives_support(http, sandbox):
    page = http.get(f"{sandbox.viewer_url}/help").text
    for heading in (
        "Where each item comes from",
        "Conflicts",
        "Completeness banners",
        "Who may see what",
        "What is recorded",
    ):
        assert heading in page
    assert "scr.servicedesk@example.nhs.uk" in page and "0113 496 0000" in page
    assert 'href="/help"' in http.get(f"{sandbox.viewer_url}/").text
