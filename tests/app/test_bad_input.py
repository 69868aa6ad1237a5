"""Bad input is a clear 4xx, never a 500, and never lands in a log line as something else."""

from __future__ import annotations

import logging
import re
import socket

import pytest

from app.observability import PlainFormatter, escape_line
from app.security import MAX_BODY_BYTES, local_path

EDNA = "9991002227"  # dr-evans (hospital) has no relationship: the reason form


@pytest.mark.parametrize(
    "target",
    [
        "/r/abc/results\r\nSet-Cookie: scr_sid=stolen",
        "/r/abc/%0d%0a",  # encoded CR/LF stays text inside the path: allowed only as a literal path
        "https://evil.example/r/abc/",
        "//evil.example/r/abc/",
        "/r/abc/\\\\evil.example",
        "/r/abc/../../logout",
        "/r/other/results",
        "javascript:alert(1)",
        "/r/abc/\x00",
        "",
        None,
    ],
)
def test_redirect_targets_stay_inside_this_launch(target):
    allowed = local_path(target, "/r/abc/")
    if target == "/r/abc/%0d%0a":
        assert allowed == target  # percent-encoded: a harmless literal path, never decoded into a header
    else:
        assert allowed is None


def test_a_plain_launch_path_is_kept():
    assert local_path("/r/abc/results?page=2", "/r/abc/") == "/r/abc/results?page=2"


def reason_form(http, sandbox):
    resp = http.get(f"{sandbox.sandbox_url}/ehr/launch", params={"user": "dr-evans", "patient": EDNA}, timeout=30)
    assert "/access/reason" in resp.url, resp.url
    return resp


@pytest.mark.parametrize(
    "bad_next",
    ["/r/{ctx}/results\r\nSet-Cookie: x=1", "https://evil.example/", "/r/{ctx}/\\evil", "//evil.example/r/{ctx}/"],
)
def test_a_hostile_next_after_the_reason_form_goes_home(http, sandbox, bad_next):
    form = reason_form(http, sandbox)
    ctx = re.search(r"/r/([^/]+)/", form.url).group(1)
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form.text))
    fields.update(reason="TREAT", next=bad_next.format(ctx=ctx))
    resp = http.post(form.url.split("?")[0], data=fields, allow_redirects=False, timeout=30)
    assert resp.status_code in (302, 303), resp.text[:500]
    assert resp.headers["Location"].endswith(f"/r/{ctx}/") and "\n" not in resp.headers["Location"]
    assert "x=1" not in resp.headers.get("Set-Cookie", "")


def test_an_oversized_body_is_413_and_nothing_is_saved(http, sandbox):
    form = reason_form(http, sandbox)
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form.text))
    fields.update(reason="TREAT", note="x" * (MAX_BODY_BYTES + 1))
    resp = http.post(form.url.split("?")[0], data=fields, timeout=30)
    assert resp.status_code == 413 and "Too much data sent" in resp.text
    again = http.get(form.url, timeout=30)
    assert "/access/reason" in again.url  # the reason was not recorded


def test_an_oversized_header_is_431(http, sandbox):
    resp = http.get(f"{sandbox.viewer_url}/", headers={"X-Filler": "a" * 9000}, timeout=10)
    assert resp.status_code == 431 and "header data" in resp.text


@pytest.mark.parametrize(
    ("method", "path"),
    [("DELETE", "/"), ("PUT", "/callback"), ("PATCH", "/launch"), ("TRACE", "/"), ("PROPFIND", "/start")],
)
def test_odd_methods_are_405(http, sandbox, method, path):
    resp = http.request(method, f"{sandbox.viewer_url}{path}", timeout=10)
    assert resp.status_code == 405, (method, path, resp.status_code)
    assert "GET" in resp.headers.get("Allow", "")


def test_a_malformed_request_line_is_a_4xx_not_a_crash(sandbox):
    host, port = sandbox.viewer_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(b"GET /\r\x00 HTTP/1.1\r\nHost: x\r\n\r\n")
        status = conn.recv(64).split(b" ")[1]
    assert status.startswith(b"4"), status


def test_log_lines_escape_cr_and_lf():
    record = logging.LogRecord("t", logging.WARNING, __file__, 1, "user said %s", ("ok\r\nFAKE ERROR line",), None)
    line = PlainFormatter("%(levelname)s %(message)s").format(record)
    assert "\n" not in line and "\r" not in line and "ok\\r\\nFAKE ERROR line" in line
    assert escape_line("a\\nb") == "a\\\\nb"  # a literal backslash-n cannot pose as an escaped newline


def test_metrics_are_not_public(http, sandbox):
    url = f"{sandbox.viewer_url}/metrics"
    assert http.get(url, timeout=10).status_code == 200  # a direct loopback scrape
    assert http.get(url, headers={"X-Forwarded-For": "203.0.113.9"}, timeout=10).status_code == 404  # via a proxy


def test_metrics_with_a_token_need_it(http, sandbox, monkeypatch):
    from dataclasses import replace

    config = sandbox.viewer_app.config["SCR"]
    monkeypatch.setitem(
        sandbox.viewer_app.config, "SCR", replace(config, viewer=replace(config.viewer, metrics_token="s3cret-token"))
    )
    url = f"{sandbox.viewer_url}/metrics"
    assert http.get(url, timeout=10).status_code == 401
    assert http.get(url, headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
    ok = http.get(url, headers={"Authorization": "Bearer s3cret-token"}, timeout=10)
    assert ok.status_code == 200 and "scr_http_requests_total" in ok.text
