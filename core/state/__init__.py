"""Server-side state: sessions, OAuth state, launch contexts, tokens, reasons, record snapshots.

In one process (``make run``, tests) a ``MemoryStore``; across workers and hosts a ``RedisStore``.
"""

from __future__ import annotations

from .store import KeyValueStore, MemoryStore, StoreUnavailable


def open_store(redis_url: str | None) -> KeyValueStore:
    """Redis when a URL is configured, otherwise in-process memory."""
    if redis_url:
        from .redis import RedisStore

        return RedisStore(redis_url)
    return MemoryStore()


__all__ = ["KeyValueStore", "MemoryStore", "StoreUnavailable", "open_store"]
