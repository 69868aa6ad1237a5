"""Server-side state: OAuth state, launch contexts, tokens, sessions — never in the browser.

``MemoryStore`` serves one process (``make run``, tests). A Redis-backed store with the same interface
serves many workers and hosts. Values are JSON-able dicts; every key has a time to live.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class StoreUnavailable(RuntimeError):
    """The state store cannot be reached: nothing can be done safely without it."""


class KeyValueStore(Protocol):
    def get(self, key: str) -> dict | None: ...

    def set(self, key: str, value: dict, ttl: int) -> None: ...

    def pop(self, key: str) -> dict | None:
        """Get and delete in one step: single-use values (OAuth state) can never be used twice."""

    def delete(self, key: str) -> None: ...

    def lock(self, key: str, timeout: float = 10.0) -> contextmanager: ...


class MemoryStore:
    """A dict with expiry, safe across threads of one process."""

    def __init__(self) -> None:
        self._data: dict[str, tuple[float, dict]] = {}
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def get(self, key: str) -> dict | None:
        with self._guard:
            item = self._data.get(key)
            if item is None:
                return None
            expires, value = item
            if expires < time.time():
                del self._data[key]
                return None
            return copy.deepcopy(value)

    def set(self, key: str, value: dict, ttl: int) -> None:
        with self._guard:
            self._data[key] = (time.time() + ttl, copy.deepcopy(value))
            if len(self._data) > 10_000:
                self._sweep()

    def pop(self, key: str) -> dict | None:
        with self._guard:
            item = self._data.pop(key, None)
        if item is None or item[0] < time.time():
            return None
        return item[1]

    def delete(self, key: str) -> None:
        with self._guard:
            self._data.pop(key, None)

    @contextmanager
    def lock(self, key: str, timeout: float = 10.0) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        if not lock.acquire(timeout=timeout):
            raise TimeoutError(f"could not lock {key} within {timeout}s")
        try:
            yield
        finally:
            lock.release()

    def _sweep(self) -> None:
        now = time.time()
        for k in [k for k, (exp, _) in self._data.items() if exp < now]:
            del self._data[k]
