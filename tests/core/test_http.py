"""The outbound HTTP layer: pools per process, same-origin rules, limits, and the one retry of a GET
whose pooled connection the server dropped."""

from __future__ import annotations

import os
import socket
import threading
import time
import tracemalloc

import pytest
import urllib3

import core.http
from core.fhir_client import FhirReader
from core.http import (
    ResponseTooLarge,
    TimedOut,
    Unreachable,
    fetch_executor,
    http_get,
    http_pool,
    http_session,
    same_base,
    same_origin,
)

from .rawserver import RawServer, reset, response

PATIENT = {"resourceType": "Patient", "id": "p1"}


def ok(server, seen, conn):
    return response(PATIENT)


# ---- the same-origin rule, in one place ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "same"),
    [
        ("https://ehr.example/fhir/Patient?page=2", True),
        ("https://EHR.example:443/other/path", True),  # same origin: any path, default port spelled out
        ("http://ehr.example/fhir/Patient", False),  # downgrade to http
        ("https://ehr.example:8443/fhir/Patient", False),  # another port
        ("https://evil.example/fhir/Patient", False),
        ("https://ehr.example.evil.example/fhir", False),
        ("https://ehr.example:bad/fhir", False),  # unparseable port
    ],
)
def test_same_origin(url, same):
    assert same_origin(url, "https://ehr.example/fhir") is same


@pytest.mark.parametrize(
    ("url", "same"),
    [
        ("https://ehr.example/fhir/Patient/1", True),
        ("https://ehr.example/fhir", True),
        ("https://ehr.example:443/fhir/Practitioner/2", True),
        ("https://ehr.example/fhir-other/Patient/1", False),  # a prefix of the name is not the base
        ("https://ehr.example/admin/Patient/1", False),  # same origin, outside the base path
        ("https://ehr.example/fhir/../admin", False),  # dot segments climb out of the base
        ("http://ehr.example/fhir/Patient/1", False),
        ("https://evil.example/fhir/Patient/1", False),
    ],
)
def test_same_base(url, same):
    assert same_base(url, "https://ehr.example/fhir/") is same


# ---- pools: one set per process, new in a forked child ------------------------------------------------------


def test_pools_are_shared_within_a_process():
    assert http_pool() is http_pool()
    assert fetch_executor() is fetch_executor()
    assert http_session() is http_session()
    assert http_session().trust_env is False  # no proxies or credentials from the environment


def test_reset_after_fork_gives_new_pools(monkeypatch):
    monkeypatch.setattr(core.http, "_pools", core.http._pools)  # restored after the test
    before = (http_pool(), fetch_executor(), http_session())
    core.http._reset_after_fork()  # what os.register_at_fork(after_in_child=...) runs in a child
    after = (http_pool(), fetch_executor(), http_session())
    try:
        assert all(a is not b for a, b in zip(before, after, strict=True))
        assert fetch_executor().submit(lambda: 6 * 7).result(timeout=5) == 42
    finally:
        after[0].clear()
        after[1].shutdown(wait=False)
        after[2].close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork in a threaded process (Python 3.12+)
def test_a_real_fork_gets_its_own_pools():
    parent = (http_pool(), fetch_executor(), http_session())
    for pool in parent:
        pool._made_in_parent = True
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running any of pytest's teardown
        try:
            child = (http_pool(), fetch_executor(), http_session())
            fresh = not any(getattr(p, "_made_in_parent", False) for p in child)
            works = fetch_executor().submit(lambda: 6 * 7).result(timeout=5) == 42
            os.write(write_end, b"fresh" if fresh and works else b"stale")
        except BaseException as exc:  # noqa: BLE001
            os.write(write_end, repr(exc).encode()[:200])
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        answer = os.read(read_end, 256)
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    assert answer == b"fresh"
    assert (http_pool(), fetch_executor(), http_session()) == parent  # the parent keeps its own


# ---- one GET: headers, timeouts ------------------------------------------------------------------------------


def test_get_sends_request_id_and_user_agent_and_params():
    with RawServer(ok) as server:
        resp = http_get(server.url("/fhir/Patient"), params={"identifier": "a|b", "_count": 2}, request_id="rid-1")
    assert resp.status == 200 and resp.body.startswith(b'{"resourceType"')
    seen = server.log[0]
    assert seen.method == "GET" and seen.target == "/fhir/Patient?identifier=a%7Cb&_count=2"
    assert seen.headers["X-Request-Id"] == "rid-1"
    assert seen.headers["User-Agent"] == core.http.USER_AGENT


def test_a_timeout_is_not_retried():
    def silent(server, seen, conn):
        time.sleep(1.5)
        return response(PATIENT)

    with RawServer(silent) as server:
        started = time.time()
        with pytest.raises(TimedOut):
            http_get(server.url("/slow"), timeout=0.3)
        assert time.time() - started < 1.0
        assert len(server.log) == 1


def test_a_passed_deadline_sends_nothing():
    with RawServer(ok) as server:
        with pytest.raises(TimedOut):
            http_get(server.url("/x"), deadline=time.time() - 1)
        assert server.log == []


def test_a_refused_connection_is_unreachable_not_a_timeout():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(Unreachable):
        http_get(f"http://127.0.0.1:{port}/x", timeout=2)


# ---- a connection the server closed while idle -------------------------------------------------------------


def test_idle_connection_closed_by_the_server_is_not_shown_as_unreachable():
    """The server closes each keep-alive connection 0.2 s after answering, without ``Connection: close``."""
    with RawServer(ok, idle_close=0.2) as server:
        reader = FhirReader(server.base, request_id="rid-idle")
        assert reader.get("Patient/p1")["id"] == "p1"
        server.wait_idle_closes(1)  # the server has now closed the pooled connection
        assert reader.get("Patient/p1")["id"] == "p1"
    assert [(s.conn, s.nth) for s in server.log] == [(1, 1), (2, 1)]  # each GET sent once, on a new connection
    assert server.connections == 2


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_a_dropped_pooled_connection_is_retried_exactly_once(how):
    """The race behind the occasional "could not be reached": the server's idle timer fires just as the next
    request goes out on the pooled connection, so it reads the request and closes without answering."""

    def drop_reused(server, seen, conn):
        if seen.nth == 1:
            return response(PATIENT)
        if how == "rst":
            return reset(conn)
        conn.close()
        return None

    with RawServer(drop_reused) as server:
        # Without the layer's retry, the second GET on the kept-alive connection fails:
        pool = urllib3.PoolManager(retries=False)
        assert pool.request("GET", server.url("/a")).status == 200
        with pytest.raises(urllib3.exceptions.ProtocolError):
            pool.request("GET", server.url("/a"))
        pool.clear()
        server.log.clear()
        connections_before = server.connections

        reader = FhirReader(server.base, request_id="rid-drop")
        assert reader.get("Patient/p1")["id"] == "p1"
        assert reader.get("Patient/p1")["id"] == "p1"
    # The second GET was dropped on the reused connection and sent once more, on a new one.
    assert [(s.conn - connections_before, s.nth) for s in server.log] == [(1, 1), (1, 2), (2, 1)]
    assert all(s.method == "GET" for s in server.log)


def test_resets_mid_response_fail_after_one_retry_not_a_loop():
    def reset_mid_body(server, seen, conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: 5000\r\n\r\n")
        conn.sendall(b'{"resourceType": "Bundle", "entry": [')
        time.sleep(0.05)
        return reset(conn)

    with RawServer(reset_mid_body) as server:
        reader = FhirReader(server.base)
        with pytest.raises(Unreachable, match="connection broken twice"):
            reader.get("Observation", {"patient": "p1"})
    assert len(server.log) == 2  # the first try and exactly one retry
    assert server.connections == 2


# ---- the size limit ----------------------------------------------------------------------------------------------


def test_declared_body_over_the_limit_is_refused_without_reading_it():
    def huge_declared(server, seen, conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: 500000000\r\n\r\n")
        try:
            for _ in range(20):
                conn.sendall(b"x" * 65536)
        except OSError:
            pass
        return reset(conn)

    with RawServer(huge_declared) as server:
        with pytest.raises(ResponseTooLarge, match="larger than 1000000 bytes"):
            http_get(server.url("/big"), max_bytes=1_000_000)
        assert len(server.log) == 1  # not retried


def test_streamed_body_over_the_limit_stops_reading_early():
    """No Content-Length (chunked): the reader stops once the limit is passed; memory stays near the limit."""
    sent = {"bytes": 0, "finished": threading.Event()}
    chunk = b"x" * 65536

    def endless(server, seen, conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            while sent["bytes"] < 256 * 1024 * 1024:
                conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent["bytes"] += len(chunk)
        except OSError:
            pass
        sent["finished"].set()
        return reset(conn)

    with RawServer(endless) as server:
        tracemalloc.start()
        try:
            with pytest.raises(ResponseTooLarge):
                http_get(server.url("/big"), max_bytes=2 * 1024 * 1024)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert sent["finished"].wait(5)  # the server noticed the client had gone
    assert peak < 8 * 1024 * 1024, f"peak {peak} bytes while refusing a body over 2 MB"
    assert sent["bytes"] < 64 * 1024 * 1024  # the client stopped long before the server's 256 MB


def test_size_limit_is_per_call():
    body = response({"resourceType": "Bundle", "entry": [{"resource": {"x": "y" * 5000}}]})

    with RawServer(lambda server, seen, conn: body) as server:
        with pytest.raises(ResponseTooLarge):
            FhirReader(server.base, max_bytes=1000).get("Observation")
        assert FhirReader(server.base).get("Observation")["resourceType"] == "Bundle"
