"""The shared store for many workers and hosts: the same interface as MemoryStore, kept in Redis.

Each value is its own key with its own TTL (tokens are never rewritten with the session: pitfall S1).
``pop`` is atomic (GETDEL), so OAuth state is single-use across every node. Locks are Redis locks with a
token and a timeout, so a crashed worker cannot hold one forever. Any Redis failure becomes
StoreUnavailable: the caller shows a clear error and nothing half-done is kept.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import redis

from .store import StoreUnavailable

PREFIX = "scr:"


class RedisStore:
    def __init__(self, url: str, prefix: str = PREFIX) -> None:
        self.url, self.prefix = url, prefix
        self._client: redis.Redis | None = None
        self._pid: int | None = None
        self._guard = threading.Lock()

    @property
    def client(self) -> redis.Redis:
        """One connection pool per process, created after fork (pitfall H2)."""
        with self._guard:
            if self._client is None or self._pid != os.getpid():
                self._client = redis.Redis.from_url(
                    self.url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=30
                )
                self._pid = os.getpid()
            return self._client

    def _k(self, key: str) -> str:
        return self.prefix + key

    def get(self, key: str) -> dict | None:
        try:
            raw = self.client.get(self._k(key))
        except redis.RedisError as exc:
            raise StoreUnavailable(f"redis get failed: {exc.__class__.__name__}") from exc
        return json.loads(raw) if raw else None

    def set(self, key: str, value: dict, ttl: int) -> None:
        try:
            self.client.set(self._k(key), json.dumps(value, separators=(",", ":")), ex=max(int(ttl), 1))
        except redis.RedisError as exc:
            raise StoreUnavailable(f"redis set failed: {exc.__class__.__name__}") from exc

    def pop(self, key: str) -> dict | None:
        try:
            raw = self.client.getdel(self._k(key))
        except redis.RedisError as exc:
            raise StoreUnavailable(f"redis getdel failed: {exc.__class__.__name__}") from exc
        return json.loads(raw) if raw else None

    def delete(self, key: str) -> None:
        try:
            self.client.delete(self._k(key))
        except redis.RedisError as exc:
            raise StoreUnavailable(f"redis delete failed: {exc.__class__.__name__}") from exc

    @contextmanager
    def lock(self, key: str, timeout: float = 10.0) -> Iterator[None]:
        lock = self.client.lock(self._k(f"lock:{key}"), timeout=max(timeout * 2, 5), blocking_timeout=timeout)
        try:
            acquired = lock.acquire()
        except redis.RedisError as exc:
            raise StoreUnavailable(f"redis lock failed: {exc.__class__.__name__}") from exc
        if not acquired:
            raise TimeoutError(f"could not lock {key} within {timeout}s")
        try:
            yield
        finally:
            # Expired while held: another worker may now hold it, and there is nothing to undo.
            with suppress(redis.exceptions.LockError):
                lock.release()

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    # Bytes values (compressed record snapshots), same failure semantics.
    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self.client.get(self._k(key))
        except redis.RedisError as exc:
            raise StoreUnavailable(f"redis get failed: {exc.__class__.__name__}") from exc

    def set_bytes(self, key: str, value: bytes, ttl: int) -> None:
        try:
            self.client.set(self._k(key), value, ex=max(int(ttl), 1))
        except redis.RedisError as exc:
            raise StoreUnavailable(f"redis set failed: {exc.__class__.__name__}") from exc
