"""The alert outbox: alerts leave the user's request through a table, never over the network inside it.

``AlertBox.raise_alert`` writes the alert and one ``alert_outbox`` row per webhook destination in one
transaction (:meth:`AlertOutbox.enqueue`) and returns; a daemon worker thread in each process drains the
table. Several workers, processes and hosts may drain the same table at once: a row is *claimed* with a
lease (``claimed_by``/``claimed_until``) by a conditional UPDATE that only one of them can win — on
PostgreSQL the candidates are also read ``FOR UPDATE SKIP LOCKED`` so drainers do not queue behind each
other — and only the holder of the lease records the result.

A row is ``pending`` until a destination answers 2xx (``delivered``); each failure (connection error,
timeout, non-2xx) adds one to ``attempts`` and waits ``retry_seconds * 2**(attempts-1)`` (capped) before
the next try; after ``max_attempts`` failures it is ``dead`` (the dead letter: logged, kept, and put back
with ``flask audit outbox --retry-dead``). Nothing is ever deleted.

Delivery is at least once: a lease is far longer than one attempt (``timeout``), but if a process dies
after the webhook answered and before the row was marked, the row is delivered again when the lease
ends. Each POST carries ``Idempotency-Key: alert-outbox-<row id>`` so a receiver can drop a repeat.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

import requests
from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from app.schema import alert_outbox, alerts
from core.http import http_session

from .store import AuditStore

log = logging.getLogger(__name__)

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
STATES = (PENDING, DELIVERED, DEAD)
MAX_ERROR = 300  # characters of last_error kept (the column's size)


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def redact(url: str) -> str:
    """A destination for the logs: scheme, host, port and path — never a query string or credentials."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class AlertOutbox:
    """Writes outbox rows (in the caller's transaction) and drains them (worker thread or ``drain_once``).

    ``urls``: the webhook destinations each new alert goes to. ``timeout``: seconds per delivery attempt.
    ``max_attempts``: failures before a row is dead. ``retry_seconds``: the first back-off, doubled on each
    further failure up to ``max_backoff``. A worker thread runs (started lazily by the first alert, or by
    :meth:`ensure_started`) only with ``background`` and at least one destination; otherwise rows wait for
    :meth:`drain_once` (the CLI, tests). ``clock`` is for tests.
    """

    def __init__(
        self,
        store: AuditStore,
        urls: Iterable[str] = (),
        *,
        timeout: float = 3.0,
        max_attempts: int = 6,
        retry_seconds: float = 5.0,
        max_backoff: float = 900.0,
        lease_seconds: float | None = None,
        poll_seconds: float = 2.0,
        batch: int = 20,
        background: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.urls = tuple(u for u in urls if u)
        self.timeout = float(timeout)
        self.max_attempts = max(1, int(max_attempts))
        self.retry_seconds = max(0.0, float(retry_seconds))
        self.max_backoff = float(max_backoff)
        # The lease must outlast an attempt by far, or a slow answer could let a second drainer retry the row.
        self.lease_seconds = float(lease_seconds) if lease_seconds is not None else max(60.0, 10 * self.timeout)
        self.poll_seconds = float(poll_seconds)
        self.batch = int(batch)
        self.background = background and bool(self.urls)
        self.clock = clock
        self._reset()
        os.register_at_fork(after_in_child=functools.partial(_reset_in_child, weakref.ref(self)))

    def _reset(self) -> None:
        """Fresh per-process state: a forked child has none of its parent's threads, and maybe a held lock."""
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._atexit = False
        self.worker_id = f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    # -- writing (inside raise_alert's transaction) ----------------------------------------------------------
    def enqueue(self, conn: Connection, alert_id: int) -> int:
        """One pending row per destination for this alert, on the caller's connection and transaction."""
        if not self.urls:
            return 0
        now = self.clock()
        conn.execute(
            insert(alert_outbox),
            [
                {
                    "alert_id": alert_id,
                    "destination": url,
                    "state": PENDING,
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created": _iso(now),
                }
                for url in self.urls
            ],
        )
        return len(self.urls)

    def nudge(self) -> None:
        """New rows were committed: make sure this process's worker runs, and wake it. No network here."""
        if self.background:
            self.ensure_started()
            self._wake.set()

    # -- the worker thread -----------------------------------------------------------------------------------
    def start(self) -> None:
        self.ensure_started()

    def ensure_started(self) -> None:
        """Start this process's worker if it is not running (cheap: call it as often as you like)."""
        if not self.background:
            return
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            if not self._atexit:
                atexit.register(_stop_at_exit, weakref.ref(self))  # finish the attempt in hand, then exit
                self._atexit = True
            self._stop.clear()
            self._thread = threading.Thread(
                target=_work, args=(weakref.ref(self), self._stop, self._wake), name="alert-outbox", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the worker; wait up to ``timeout`` s (default: the delivery timeout + 5 s) for the attempt in hand."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout if timeout is not None else self.timeout + 5)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- draining ----------------------------------------------------------------------------------------------
    def drain_once(self) -> int:
        """Claim the rows due now (up to ``batch``), deliver each, record the outcome; returns how many."""
        claimed = self._claim()
        for row in claimed:
            if self._stop.is_set() and self.background and threading.current_thread() is self._thread:
                self._release(row["id"])  # shutting down: let another worker have it now, not after the lease
                continue
            self._deliver(row)
        return len(claimed)

    def _claim(self) -> list[dict]:
        now = self.clock()
        due = and_(
            alert_outbox.c.state == PENDING,
            alert_outbox.c.next_attempt_at <= now,
            or_(alert_outbox.c.claimed_until.is_(None), alert_outbox.c.claimed_until < now),
        )
        claimed_ids: list[int] = []
        with self.store.engine.begin() as conn:
            candidates = conn.scalars(
                select(alert_outbox.c.id)
                .where(due)
                .order_by(alert_outbox.c.next_attempt_at, alert_outbox.c.id)
                .limit(self.batch)
                .with_for_update(skip_locked=True)  # PostgreSQL; SQLite has BEGIN IMMEDIATE (one writer)
            ).all()
            for row_id in candidates:
                won = conn.execute(
                    update(alert_outbox)
                    .where(alert_outbox.c.id == row_id)
                    .where(due)  # re-checked under the row lock: only one drainer can win a row
                    .values(claimed_by=self.worker_id, claimed_until=now + self.lease_seconds)
                ).rowcount
                if won == 1:
                    claimed_ids.append(row_id)
        if not claimed_ids:
            return []
        with self.store.engine.connect() as conn:
            rows = conn.execute(
                select(alert_outbox, *[c.label(f"alert__{c.name}") for c in alerts.c])
                .join(alerts, alerts.c.id == alert_outbox.c.alert_id)
                .where(alert_outbox.c.id.in_(claimed_ids))
                .order_by(alert_outbox.c.id)
            ).all()
        return [dict(r._mapping) for r in rows]

    def _deliver(self, row: dict) -> None:
        payload = {c.name: row[f"alert__{c.name}"] for c in alerts.c}
        error = None
        try:
            resp = http_session().post(
                row["destination"],
                data=json.dumps(payload),
                headers={
                    "Content-Type": "application/json",
                    "Idempotency-Key": f"alert-outbox-{row['id']}",
                },
                timeout=self.timeout,
                allow_redirects=False,
            )
            if not 200 <= resp.status_code < 300:
                error = f"HTTP {resp.status_code}"
            resp.close()
        except requests.RequestException as exc:
            error = exc.__class__.__name__
        except Exception as exc:  # noqa: BLE001 - a bad URL in the config must not kill the worker
            error = f"{exc.__class__.__name__}: {exc}"
        if error is None:
            self._mark_delivered(row)
        else:
            self._mark_failed(row, error[:MAX_ERROR])

    def _mine(self, row_id: int):
        return and_(alert_outbox.c.id == row_id, alert_outbox.c.claimed_by == self.worker_id)

    def _mark_delivered(self, row: dict) -> None:
        now = self.clock()
        with self.store.engine.begin() as conn:
            conn.execute(
                update(alert_outbox)
                .where(self._mine(row["id"]))
                .values(
                    state=DELIVERED,
                    attempts=row["attempts"] + 1,
                    delivered_at=_iso(now),  # last_error, if any, stays: the row's history
                    claimed_by=None,
                    claimed_until=None,
                )
            )

    def _mark_failed(self, row: dict, error: str) -> None:
        now = self.clock()
        attempts = row["attempts"] + 1
        values = {"attempts": attempts, "last_error": error, "claimed_by": None, "claimed_until": None}
        if attempts >= self.max_attempts:
            values["state"] = DEAD
            log.error(
                "alert %s not delivered to %s after %d attempts (last: %s): dead-lettered in the outbox (row %s)",
                row["alert_id"],
                redact(row["destination"]),
                attempts,
                error,
                row["id"],
            )
        else:
            delay = min(self.retry_seconds * 2 ** (attempts - 1), self.max_backoff)
            values["next_attempt_at"] = now + delay
            log.warning(
                "alert %s not delivered to %s (attempt %d of %d: %s); next try in %.0f s",
                row["alert_id"],
                redact(row["destination"]),
                attempts,
                self.max_attempts,
                error,
                delay,
            )
        with self.store.engine.begin() as conn:
            conn.execute(update(alert_outbox).where(self._mine(row["id"])).values(**values))

    def _release(self, row_id: int) -> None:
        try:
            with self.store.engine.begin() as conn:
                conn.execute(update(alert_outbox).where(self._mine(row_id)).values(claimed_by=None, claimed_until=None))
        except SQLAlchemyError:
            pass  # the lease ends on its own

    # -- operations (CLI) ----------------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        with self.store.engine.connect() as conn:
            found = dict(conn.execute(select(alert_outbox.c.state, func.count()).group_by(alert_outbox.c.state)).all())
        return {state: int(found.get(state, 0)) for state in (*STATES, *sorted(set(found) - set(STATES)))}

    def entries(self, state: str | None = None, limit: int = 50) -> list[dict]:
        q = select(alert_outbox).order_by(alert_outbox.c.id.desc()).limit(limit)
        if state:
            q = q.where(alert_outbox.c.state == state)
        with self.store.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def retry_dead(self) -> int:
        """Put every dead row back to pending, due now, with a fresh set of attempts."""
        with self.store.engine.begin() as conn:
            n = conn.execute(
                update(alert_outbox)
                .where(alert_outbox.c.state == DEAD)
                .values(state=PENDING, attempts=0, next_attempt_at=self.clock(), claimed_by=None, claimed_until=None)
            ).rowcount
        if n:
            self.nudge()
        return n


def _work(ref: weakref.ref, stop: threading.Event, wake: threading.Event) -> None:
    """The worker: drain while rows are due, then sleep until nudged or ``poll_seconds`` (rows written by
    other processes, retries coming due). Holds its outbox only weakly: a discarded outbox ends its worker."""
    failures = 0
    while not stop.is_set():
        outbox = ref()
        if outbox is None:
            return
        wake.clear()
        try:
            handled = outbox.drain_once()
            failures = 0
        except Exception as exc:  # noqa: BLE001 - the worker must outlive a database outage
            failures += 1
            handled = 0
            if failures == 1 or failures % 30 == 0:
                log.warning("alert outbox: drain failed (%s), %d time(s) in a row", type(exc).__name__, failures)
        wait = outbox.poll_seconds * min(2**failures, 30)  # backs off while the database is down
        del outbox
        if handled and not stop.is_set():
            continue  # more may be due right now
        wake.wait(wait)


def _stop_at_exit(ref: weakref.ref) -> None:
    outbox = ref()
    if outbox is not None:
        outbox.stop()


def _reset_in_child(ref: weakref.ref) -> None:
    outbox = ref()
    if outbox is not None:
        outbox._reset()  # the worker starts again lazily in this process (nudge / ensure_started)
