"""The server-side session's lifetimes: idle timeout, absolute lifetime, ending on purpose, one claim per end."""

from __future__ import annotations

import pytest
from flask import Flask, jsonify, session

from core.state.session import (
    ABSOLUTE,
    COOKIE_NAME,
    IDLE,
    LOGOUT,
    RETURN_GRACE,
    ServerSessionInterface,
)
from core.state.store import MemoryStore


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr("core.state.session.time", clock)
    monkeypatch.setattr("core.state.store.time", clock)  # the store's expiry follows the same clock
    return clock


@pytest.fixture
def app(clock) -> Flask:
    app = Flask(__name__)
    store = MemoryStore()
    app.session_interface = ServerSessionInterface(store, idle_timeout=60, absolute_lifetime=600)
    app.config["store"] = store

    @app.post("/set/<value>")
    def put(value):
        session["value"] = value
        return ""

    @app.get("/get")
    def get():
        ended = session.ended
        return jsonify(
            value=session.get("value"),
            ended=ended.reason if ended else None,
            ended_value=ended.data.get("value") if ended else None,
        )

    @app.post("/end")
    def end():
        ended = session.end(LOGOUT)
        first = app.session_interface.claim(ended)
        return jsonify(data=ended.data, first=first, again=app.session_interface.claim(ended))

    return app


def cookie(client) -> str | None:
    found = client.get_cookie(COOKIE_NAME)
    return found.value if found else None


def test_a_session_in_use_lives_on_and_its_last_use_is_kept(app, clock):
    client = app.test_client()
    client.post("/set/a")
    sid = cookie(client)
    for _ in range(5):  # five requests 50 s apart: never idle for a minute
        clock.now += 50
        assert client.get("/get").json == {"value": "a", "ended": None, "ended_value": None}
    assert cookie(client) == sid
    stored = app.config["store"].get(f"session:{sid}")
    assert stored["data"] == {"value": "a"} and stored["seen"] == clock.now


def test_an_idle_session_ends_and_hands_back_what_it_held(app, clock):
    client = app.test_client()
    client.post("/set/a")
    sid = cookie(client)
    clock.now += 61
    resp = client.get("/get")
    assert resp.json == {"value": None, "ended": IDLE, "ended_value": "a"}
    assert app.config["store"].get(f"session:{sid}") is None  # the old record is gone
    assert cookie(client) is None  # and the browser's cookie with it
    assert client.get("/get").json["ended"] is None  # ended once, not on every request after


def test_the_absolute_lifetime_ends_even_a_busy_session(app, clock):
    client = app.test_client()
    client.post("/set/a")
    for _ in range(12):  # busy all along: a request every 50 s for ten minutes
        clock.now += 50
        assert client.get("/get").json["ended"] is None
    clock.now += 1
    resp = client.get("/get")
    assert resp.json == {"value": None, "ended": ABSOLUTE, "ended_value": "a"}


def test_what_is_set_after_an_end_belongs_to_a_new_session_with_a_new_lifetime(app, clock):
    client = app.test_client()
    client.post("/set/a")
    old = cookie(client)
    clock.now += 61
    client.post("/set/b")
    new = cookie(client)
    assert new and new != old
    stored = app.config["store"].get(f"session:{new}")
    assert stored["data"] == {"value": "b"} and stored["created"] == clock.now


def test_the_record_outlives_the_idle_timeout_so_the_end_is_recognised(app, clock):
    client = app.test_client()
    client.post("/set/a")
    assert client.get_cookie(COOKIE_NAME).max_age == 600 + RETURN_GRACE
    clock.now += 599  # idle for ten minutes, but within the lifetime: still recognised as this session's end
    assert client.get("/get").json["ended"] == IDLE


def test_ending_on_purpose_rotates_the_id_and_one_request_claims_the_end(app, clock):
    client = app.test_client()
    client.post("/set/a")
    old = cookie(client)
    resp = client.post("/end")
    assert resp.json == {"data": {"value": "a"}, "first": True, "again": False}
    assert cookie(client) is None
    assert app.config["store"].get(f"session:{old}") is None


def test_a_session_stored_before_lifetimes_existed_starts_its_lifetime_now(app, clock):
    client = app.test_client()
    app.config["store"].set("session:legacy-session-id", {"value": "old"}, ttl=3600)
    client.set_cookie(COOKIE_NAME, "legacy-session-id")
    assert client.get("/get").json == {"value": "old", "ended": None, "ended_value": None}


def test_limits_must_be_positive():
    with pytest.raises(ValueError):
        ServerSessionInterface(MemoryStore(), idle_timeout=0)
