"""Bounded reads in the HTTP layer: the deadline holds while a body trickles in, a byte budget shared by many
GETs is charged as bytes arrive, and a token never follows a link whose host two URL parsers disagree on."""

from __future__ import annotations

import time

import pytest

from core.fhir_client import FhirReader, OutsideBase, TokenSource
from core.http import BudgetExhausted, ByteBudget, TimedOut, http_get, same_base, same_origin

from .rawserver import RawServer, response


def test_a_body_trickled_past_the_deadline_stops_at_the_deadline():
    """Content-Length declared, then a few bytes every 20 ms: the read stops at the deadline, not at the end."""
    body = b'{"resourceType":"Bundle"}' + b" " * 400

    def trickle(server, seen, conn):
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        try:
            for i in range(0, len(body), 2):
                conn.sendall(body[i : i + 2])
                time.sleep(0.02)
        except OSError:
            pass
        return None

    with RawServer(trickle) as server:
        started = time.monotonic()
        with pytest.raises(TimedOut):
            http_get(server.url("/slow"), timeout=1.0)
        assert time.monotonic() - started < 1.5  # the whole body would take over 4 s


def test_a_deadline_bounds_a_chunked_trickle_too():
    def trickle(server, seen, conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(200):
                conn.sendall(b"1\r\n \r\n")
                time.sleep(0.02)
        except OSError:
            pass
        return None

    with RawServer(trickle) as server:
        started = time.monotonic()
        with pytest.raises(TimedOut):
            http_get(server.url("/slow"), deadline=time.time() + 0.8)
        assert time.monotonic() - started < 1.3


def test_a_byte_budget_is_shared_by_many_gets_and_charged_as_bytes_arrive():
    page = response({"resourceType": "Bundle", "entry": [{"resource": {"x": "y" * 4000}}]})
    size = len(page.split(b"\r\n\r\n", 1)[1])

    with RawServer(lambda server, seen, conn: page) as server:
        budget = ByteBudget(3 * size + 10)
        for _ in range(3):
            http_get(server.url("/p"), budget=budget)
        assert budget.used == 3 * size
        with pytest.raises(BudgetExhausted, match="budget"):
            http_get(server.url("/p"), budget=budget)
        assert len(server.log) == 4  # refused from its declared length: no retry
        assert budget.left == 0  # spent: a smaller answer after a refused one is refused too
        with pytest.raises(BudgetExhausted):
            http_get(server.url("/p"), budget=budget)


def test_a_streamed_body_is_charged_chunk_by_chunk_and_stops_when_the_budget_is_spent():
    chunk = b"x" * 65536
    sent = {"bytes": 0}

    def endless(server, seen, conn):
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            while sent["bytes"] < 64 * 1024 * 1024:
                conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent["bytes"] += len(chunk)
        except OSError:
            pass
        return None

    with RawServer(endless) as server:
        budget = ByteBudget(1024 * 1024)
        with pytest.raises(BudgetExhausted):
            http_get(server.url("/big"), max_bytes=32 * 1024 * 1024, budget=budget)
    assert budget.used == budget.limit
    assert sent["bytes"] < 16 * 1024 * 1024


def test_the_reader_reports_the_size_of_what_it_received():
    body = {"resourceType": "Bundle", "entry": []}
    with RawServer(lambda server, seen, conn: response(body)) as server:
        reader = FhirReader(server.base)
        reader.get("Observation")
        assert reader.received == len(b'{"resourceType": "Bundle", "entry": []}')


# ---- where a token may go: links two URL parsers read differently ------------------------------------------


@pytest.mark.parametrize(
    "link",
    [
        "http://evil.example\\@127.0.0.1:8443/fhir/x",  # urllib.parse: 127.0.0.1; urllib3 connects to evil.example
        "http://127.0.0.1:9999\\@127.0.0.1:8443/fhir/x",  # the same trick to another port of the same host
        "http://127.0.0.1:8443@evil.example/fhir/x",  # userinfo that looks like the host
        "http://user:pass@127.0.0.1:8443/fhir/x",  # userinfo at all: no legitimate next link carries it
        "http://127.0.0.1.evil:8443/fhir/x",  # a look-alike host
        "http://127.0.0.1:8443\t@evil.example/fhir/x",  # whitespace and control characters
        "http://127.0.0.1:8443%2f@evil.example/fhir/x",
        "http://127.0.0.1:8444/fhir/x",  # another port
    ],
)
def test_look_alike_links_are_not_the_same_origin(link):
    assert not same_origin(link, "http://127.0.0.1:8443/fhir")
    assert not same_base(link, "http://127.0.0.1:8443/fhir")


def test_a_scheme_downgrade_is_not_the_same_origin():
    base = "https://fhir.example.nhs.uk/r4"
    assert same_origin("https://fhir.example.nhs.uk/r4/Observation?page=2", base)
    assert same_origin("https://fhir.example.nhs.uk:443/r4/Observation?page=2", base)
    assert not same_origin("http://fhir.example.nhs.uk/r4/Observation?page=2", base)  # https → http
    assert not same_origin("http://fhir.example.nhs.uk:443/r4/Observation?page=2", base)


def test_a_backslash_link_sends_nothing_anywhere():
    """The pager's reader refuses a link whose host the connecting parser reads as another server: neither
    the other server nor this one is asked, and the token is not sent."""
    bundle = response({"resourceType": "Bundle"})
    with RawServer(lambda server, seen, conn: bundle) as other, RawServer(lambda server, seen, conn: bundle) as mine:
        reader = FhirReader(mine.base, TokenSource(lambda: "secret-token", lambda: None), scope="origin")
        link = f"http://127.0.0.1:{other.port}\\@127.0.0.1:{mine.port}/Observation?page=2"
        with pytest.raises(OutsideBase):
            reader.get(link)
        assert other.log == [] and mine.log == []
