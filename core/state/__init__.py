"""Server-side state: sessions, OAuth state, launch contexts, tokens, reasons, record snapshots.

In one process (``make run``, tests) a ``MemoryStore``; across workers and hosts a ``RedisStore``.
"""

from __future__ import annotations

from .store import KeyValueStore, MemoryStore, StoreUnavailable


def open_store(redis_url: str | None, prefix: str = "scr:") -> KeyValueStore:
    """Redis when a URL is configured (every key under ``prefix``), otherwise in-process memory."""
    if redis_url:
        from .redis import RedisStore

        return RedisStore(redis_url, prefix=prefix)
    return MemoryStore()


def init_app(app, redis_url: str | None, prefix: str = "scr:") -> KeyValueStore:
    """The store, and the server-side Flask session kept in it (the browser holds only an opaque id)."""
    from .session import ServerSessionInterface

    store = open_store(redis_url, prefix)
    app.session_interface = ServerSessionInterface(store)
    return store


__all__ = ["KeyValueStore", "MemoryStore", "StoreUnavailable", "init_app", "open_store"]
