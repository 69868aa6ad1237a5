"""A server-side Flask session: the browser holds only an opaque, random session id.

The cookie is ``HttpOnly; Secure; SameSite=None; Partitioned`` so it survives inside an EHR's
cross-site iframe (CHIPS). Browsers treat 127.0.0.1 as a secure context, so ``Secure`` works on the
sandbox too. The session holds little (which launch contexts this browser may use); tokens live under
their own keys so concurrent requests never overwrite a refreshed token (pitfall S1).
"""

from __future__ import annotations

import secrets

from flask import Flask, Request, Response
from flask.sessions import SessionInterface, SessionMixin
from werkzeug.datastructures import CallbackDict

from .store import KeyValueStore, StoreUnavailable

COOKIE_NAME = "scr_sid"
IDLE_TIMEOUT = 60 * 60  # an hour without a request ends the session


class ServerSession(CallbackDict, SessionMixin):
    def __init__(self, sid: str, data: dict | None = None, new: bool = False) -> None:
        def on_update(_):
            self.modified = True

        super().__init__(data or {}, on_update)
        self.sid = sid
        self.new = new
        self.modified = False
        self.rotated_from: str | None = None
        self.unavailable = False  # the store could not be read: the request is refused, nothing saved

    def rotate(self) -> None:
        """A fresh id after sign-in: a session id fixed before login is worthless afterwards."""
        self.rotated_from = self.sid
        self.sid = new_sid()
        self.modified = True


def new_sid() -> str:
    return secrets.token_urlsafe(32)


class ServerSessionInterface(SessionInterface):
    def __init__(self, store: KeyValueStore, idle_timeout: int = IDLE_TIMEOUT) -> None:
        self.store = store
        self.idle_timeout = idle_timeout

    def open_session(self, app: Flask, request: Request) -> ServerSession:
        sid = request.cookies.get(COOKIE_NAME)
        if sid and len(sid) <= 64:
            try:
                data = self.store.get(f"session:{sid}")
            except StoreUnavailable:
                broken = ServerSession(sid)
                broken.unavailable = True  # raised as a clear 503 once the request is running
                return broken
            if data is not None:
                return ServerSession(sid, data)
        return ServerSession(new_sid(), new=True)

    def save_session(self, app: Flask, session: ServerSession, response: Response) -> None:
        if session.unavailable:
            return
        key = f"session:{session.sid}"
        if session.rotated_from:
            self.store.delete(f"session:{session.rotated_from}")
        if not session and not session.new:
            self.store.delete(key)
            response.delete_cookie(COOKIE_NAME, path="/", secure=True, samesite="None", partitioned=True)
            return
        if not session:
            return  # nothing worth a cookie yet
        # Sliding expiry: rewrite only when changed, or to extend an idle session's lifetime.
        self.store.set(key, dict(session), ttl=self.idle_timeout)
        response.set_cookie(
            COOKIE_NAME,
            session.sid,
            max_age=self.idle_timeout,
            path="/",
            secure=True,
            httponly=True,
            samesite="None",
            partitioned=True,
        )
