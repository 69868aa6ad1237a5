"""A server-side Flask session: the browser holds only an opaque, random session id.

The cookie is ``HttpOnly; Secure; SameSite=None; Partitioned`` so it survives inside an EHR's
cross-site iframe (CHIPS). Browsers treat 127.0.0.1 as a secure context, so ``Secure`` works on the
sandbox too. The session holds little (which launch contexts this browser may use); tokens live under
their own keys so concurrent requests never overwrite a refreshed token (pitfall S1).

Sessions end. Each request refreshes the session's *last seen* time; a session unused for longer than
the idle timeout, or older than its absolute lifetime, is ended when the browser comes back: the request
gets a fresh, empty session and ``session.ended`` says what ended and why, so the layers above can
forget what the old session held (launch contexts, tokens) and record the end. ``session.end(reason)``
ends it on purpose (logout, another user signing in, the EHR's sign-out). The stored record outlives
the idle timeout (until the absolute lifetime, plus ``RETURN_GRACE``) precisely so that an expired
session is recognised, not mistaken for a stranger's.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

from flask import Flask, Request, Response
from flask.sessions import SessionInterface, SessionMixin
from werkzeug.datastructures import CallbackDict

from .store import KeyValueStore, StoreUnavailable

COOKIE_NAME = "scr_sid"
IDLE_TIMEOUT = 15 * 60  # fifteen minutes without a request ends the session (shared clinical workstations)
ABSOLUTE_LIFETIME = 8 * 3600  # no session lasts longer than a shift, however busy
RETURN_GRACE = 3600  # an expired session is still recognised (and its end recorded) this long afterwards
SEEN_EVERY = 10  # seconds: "last seen" is rewritten at most this often when nothing else changed

# Why a session ended (the words the audit trail and the ended page use).
LOGOUT, IDLE, ABSOLUTE, REPLACED, FRONT_CHANNEL = "logout", "idle", "absolute", "replaced", "front-channel"
END_REASONS = (LOGOUT, IDLE, ABSOLUTE, REPLACED, FRONT_CHANNEL)


@dataclass
class SessionEnd:
    """A session that ended during this request: what it held, when it started and was last used, and why."""

    reason: str
    sid: str
    data: dict
    created: float
    seen: float
    at: float = field(default_factory=time.time)
    closed: bool = False  # the layers above have forgotten what it held and recorded the end


class ServerSession(CallbackDict, SessionMixin):
    def __init__(
        self, sid: str, data: dict | None = None, new: bool = False, created: float | None = None, seen: float = 0.0
    ) -> None:
        def on_update(_):
            self.modified = True

        super().__init__(data or {}, on_update)
        self.sid = sid
        self.new = new
        self.modified = False
        self.rotated_from: str | None = None
        self.unavailable = False  # the store could not be read: the request is refused, nothing saved
        now = time.time()
        self.created = created if created is not None else now
        self.seen = seen  # as stored (0: never stored)
        self.ended: SessionEnd | None = None

    def rotate(self) -> None:
        """A fresh id after sign-in: a session id fixed before login is worthless afterwards."""
        if self.rotated_from is None:  # the id the browser sent is the one whose record must go
            self.rotated_from = self.sid
        self.sid = new_sid()
        self.modified = True

    def end(self, reason: str) -> SessionEnd:
        """End this session now: its data is handed back (in ``ended``), it is emptied and its id changes.

        What is set afterwards belongs to a new session with a new id and a new lifetime."""
        ended = SessionEnd(reason, self.rotated_from or self.sid, dict(self), self.created, self.seen)
        self.ended = ended
        self.clear()
        self.rotate()
        self.created = time.time()
        return ended


def new_sid() -> str:
    return secrets.token_urlsafe(32)


class ServerSessionInterface(SessionInterface):
    def __init__(
        self, store: KeyValueStore, idle_timeout: int = IDLE_TIMEOUT, absolute_lifetime: int = ABSOLUTE_LIFETIME
    ) -> None:
        self.store = store
        self.configure(idle_timeout, absolute_lifetime)

    def configure(self, idle_timeout: int, absolute_lifetime: int) -> None:
        """The two limits, in seconds (``[session]`` in the viewer's configuration)."""
        if idle_timeout <= 0 or absolute_lifetime <= 0:
            raise ValueError("session limits must be positive")
        self.idle_timeout = int(idle_timeout)
        self.absolute_lifetime = int(absolute_lifetime)

    def open_session(self, app: Flask, request: Request) -> ServerSession:
        sid = request.cookies.get(COOKIE_NAME)
        if sid and len(sid) <= 64:
            try:
                stored = self.store.get(f"session:{sid}")
            except StoreUnavailable:
                broken = ServerSession(sid)
                broken.unavailable = True  # raised as a clear 503 once the request is running
                return broken
            if stored is not None:
                return self._resume(sid, stored)
        return ServerSession(new_sid(), new=True)

    def _resume(self, sid: str, stored: dict) -> ServerSession:
        now = time.time()
        if "data" in stored and "created" in stored:
            data, created, seen = stored["data"], float(stored["created"]), float(stored.get("seen", 0))
        else:  # written before sessions had lifetimes: starts its lifetime now
            data, created, seen = stored, now, now
        session = ServerSession(sid, data, created=created, seen=seen)
        reason = (
            ABSOLUTE if now - created > self.absolute_lifetime else IDLE if now - seen > self.idle_timeout else None
        )
        if reason:
            session.end(reason)
            session.new = True  # nothing of the old session carries over, not even its lifetime
        return session

    def claim(self, ended: SessionEnd) -> bool:
        """Take the ended session's stored record: True for exactly one request, however many raced to end it
        (two tabs coming back after the idle timeout record one end, not two)."""
        try:
            return self.store.pop(f"session:{ended.sid}") is not None
        except StoreUnavailable:
            return True  # better a duplicate record of the end than none

    def save_session(self, app: Flask, session: ServerSession, response: Response) -> None:
        if session.unavailable:
            return
        key = f"session:{session.sid}"
        if session.rotated_from:
            self.store.delete(f"session:{session.rotated_from}")
        if not session:
            if not session.new or session.rotated_from:  # the browser holds a cookie for a session now gone
                self.store.delete(key)
                response.delete_cookie(COOKIE_NAME, path="/", secure=True, samesite="None", partitioned=True)
            return  # a new, empty session (e.g. /readyz) was never stored: nothing to delete
        now = time.time()
        remaining = session.created + self.absolute_lifetime - now
        ttl = max(1, int(remaining + RETURN_GRACE))
        if session.modified or session.new or session.rotated_from or now - session.seen >= SEEN_EVERY:
            stored = {"data": dict(session), "created": session.created, "seen": now}
            self.store.set(key, stored, ttl=ttl)
        response.set_cookie(
            COOKIE_NAME,
            session.sid,
            max_age=ttl,
            path="/",
            secure=True,
            httponly=True,
            samesite="None",
            partitioned=True,
        )
