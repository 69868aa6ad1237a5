"""The audit trail: append-only, hash-chained FHIR AuditEvents in SQLite (default) or PostgreSQL.

Each row stores the AuditEvent JSON, its sequence number, the previous row's hash and its own hash
(SHA-256 over the previous hash and the canonical JSON). Appends are serialised — SQLite with
``BEGIN IMMEDIATE``, PostgreSQL with a transaction-level advisory lock — so there is one chain with no
gaps or forks, whatever the concurrency. Triggers refuse UPDATE and DELETE. ``verify`` walks the chain
and reports the first broken link, and checks it against the signed checkpoints kept outside the database
(checkpoints.py), so events deleted from the end are noticed too. The same SQLAlchemy code runs on both
databases.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, event, insert, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from app.schema import audit_events

from .checkpoints import Checkpoint, CheckpointError, Checkpoints

log = logging.getLogger(__name__)

GENESIS = "0" * 64
MIGRATIONS_INI = Path(__file__).resolve().parents[1] / "alembic.ini"
_MIGRATION_LOCK = threading.Lock()
ADVISORY_LOCK_KEY = 7_204_117  # any constant: the chain's lock in PostgreSQL


class AuditUnavailable(RuntimeError):
    """The audit trail cannot be written; access must be refused."""


@dataclass(frozen=True)
class StoredEvent:
    seq: int
    recorded: str
    event: dict
    prev_hash: str
    hash: str
    index: dict | None = None
    raw: str = ""  # exactly what was hashed and stored


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    first_broken: int | None = None
    reason: str = ""
    checkpoints: int = 0  # signed checkpoints the chain was checked against
    warning: str = ""  # e.g. no checkpoint key: a shortened chain would not be noticed


def canonical(event_json: dict) -> str:
    return json.dumps(event_json, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


INDEX_COLUMNS = ("patient_nhs", "user_id", "org_ods", "purpose", "action_code", "outcome")


def chain_hash(prev_hash: str, seq: int, body: str, index: dict | None = None) -> str:
    """Covers the event and the searchable columns beside it, so neither can be changed unnoticed."""
    columns = "|".join(str((index or {}).get(c) or "") for c in INDEX_COLUMNS)
    return hashlib.sha256(f"{prev_hash}|{seq}|{columns}|{body}".encode()).hexdigest()


class AuditStore:
    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        self._pid = None
        self.checkpoints: Checkpoints | None = None  # set by init_app: signed heads kept outside the database

    # -- engine (created lazily: one per process, after fork) ------------------------------------------
    @property
    def engine(self) -> Engine:
        import os

        with self._lock:
            if self._engine is None or self._pid != os.getpid():
                self._engine = self._create_engine()
                self._pid = os.getpid()
            return self._engine

    def _create_engine(self) -> Engine:
        if self.is_sqlite:
            path = self.url.removeprefix("sqlite:///")
            if path and path != ":memory:":
                try:
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise AuditUnavailable(f"audit database folder cannot be created: {exc.strerror}") from exc
            engine = create_engine(
                self.url,
                connect_args={"check_same_thread": False, "timeout": 30},
                isolation_level=None,
                pool_pre_ping=True,
            )

            @event.listens_for(engine, "connect")
            def _pragmas(dbapi_conn, _record):
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA busy_timeout=30000")
                # WAL is a property of the database file: set it once. Asking to set it on every new connection
                # takes a lock SQLite's busy handler does not wait for, so a connection opened while another
                # writes failed at once with "database is locked".
                if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    _set_wal(cur)
                cur.execute("PRAGMA synchronous=FULL")  # an audit trail must survive power loss (pitfall D1)
                cur.close()

            @event.listens_for(engine, "begin")
            def _begin_immediate(conn):
                conn.exec_driver_sql("BEGIN IMMEDIATE")  # take the write lock before reading the chain head (D2)

            return engine
        return create_engine(self.url, pool_pre_ping=True, pool_size=5, max_overflow=10)

    def create_schema(self) -> None:
        """Bring the database to the latest migration (``migrations/``): one schema path for dev and prod."""
        from alembic import command
        from alembic.config import Config as AlembicConfig

        self.engine  # noqa: B018 - creates the SQLite folder, or fails early with AuditUnavailable
        cfg = AlembicConfig(str(MIGRATIONS_INI))
        cfg.attributes["url"] = self.url
        try:
            with _MIGRATION_LOCK:
                command.upgrade(cfg, "head")
        except (SQLAlchemyError, OSError) as exc:
            raise AuditUnavailable(f"audit store schema could not be created: {exc.__class__.__name__}") from exc

    # -- writing -------------------------------------------------------------------------------------------
    def append(
        self,
        event_json: dict,
        *,
        patient_nhs: str | None,
        user_id: str | None,
        org_ods: str | None,
        purpose: str | None,
        action_code: str,
        outcome: str,
    ) -> StoredEvent:
        """Append one event to the chain; raises AuditUnavailable if it cannot be made durable.

        Everything that does not depend on the chain head (serialising the event) happens before the lock,
        so the serialised section is one read, one SHA-256 and one insert.
        """
        serialised = canonical(event_json)
        index = {
            "patient_nhs": patient_nhs,
            "user_id": user_id,
            "org_ods": org_ods,
            "purpose": purpose,
            "action_code": action_code,
            "outcome": outcome,
        }
        try:
            with self.engine.begin() as conn:
                if not self.is_sqlite:
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
                head = conn.execute(
                    select(audit_events.c.seq, audit_events.c.hash).order_by(audit_events.c.seq.desc()).limit(1)
                ).first()
                seq = (head.seq + 1) if head else 1
                prev = head.hash if head else GENESIS
                digest = chain_hash(prev, seq, serialised, index)
                conn.execute(
                    insert(audit_events).values(
                        seq=seq,
                        recorded=event_json.get("recorded", ""),
                        patient_nhs=patient_nhs,
                        user_id=user_id,
                        org_ods=org_ods,
                        purpose=purpose,
                        action_code=action_code,
                        outcome=outcome,
                        event_json=serialised,
                        prev_hash=prev,
                        hash=digest,
                    )
                )
            if self.checkpoints is not None:
                self.checkpoints.after_append(seq, digest)  # committed: a checkpoint may now cover it
            return StoredEvent(
                seq,
                event_json.get("recorded", ""),
                {**event_json, "id": f"audit-{seq}"},
                prev,
                digest,
                index,
                serialised,
            )
        except SQLAlchemyError as exc:
            log.error("audit write failed: %s", exc.__class__.__name__)
            raise AuditUnavailable(f"audit write failed: {exc.__class__.__name__}") from exc

    # -- reading -------------------------------------------------------------------------------------------
    def search(
        self,
        *,
        patient_nhs: str | None = None,
        user_id: str | None = None,
        org_ods: str | None = None,
        purpose: str | None = None,
        date_from: str | None = None,
        date_to: str | None = None,
        limit: int = 500,
    ) -> list[StoredEvent]:
        q = select(audit_events).order_by(audit_events.c.seq.desc()).limit(limit)
        if patient_nhs:
            q = q.where(audit_events.c.patient_nhs == patient_nhs)
        if user_id:
            q = q.where(audit_events.c.user_id == user_id)
        if org_ods:
            q = q.where(audit_events.c.org_ods == org_ods)
        if purpose:
            q = q.where(audit_events.c.purpose == purpose)
        if date_from:
            q = q.where(audit_events.c.recorded >= date_from)
        if date_to:
            q = q.where(audit_events.c.recorded <= date_to + "T23:59:59Z")
        try:
            with self.engine.connect() as conn:
                return [self._row(r) for r in conn.execute(q)]
        except SQLAlchemyError as exc:
            raise AuditUnavailable(f"audit read failed: {exc.__class__.__name__}") from exc

    def iter_chain(self, batch: int = 1000) -> Iterator[StoredEvent]:
        last = 0
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(audit_events).where(audit_events.c.seq > last).order_by(audit_events.c.seq).limit(batch)
                ).all()
            if not rows:
                return
            for r in rows:
                yield self._row(r)
            last = rows[-1].seq

    def verify(self) -> VerifyResult:
        """Recompute every hash in order; the first row whose link or hash does not hold is reported. Then
        every signed checkpoint must name an event the chain still holds, with the same hash."""
        marks: dict[int, list[Checkpoint]] = {}
        warning = ""
        if self.checkpoints is not None and self.checkpoints.enabled:
            try:
                for mark in self.checkpoints.read():
                    marks.setdefault(mark.seq, []).append(mark)
            except CheckpointError as exc:
                return VerifyResult(False, 0, None, str(exc))
        elif self.checkpoints is not None:
            warning = "no checkpoint key ([audit] checkpoint_key_file): events deleted from the end go unnoticed"
        prev, expected_seq, checked = GENESIS, 1, 0
        for item in self.iter_chain():
            if item.seq != expected_seq:
                return VerifyResult(
                    False, checked, expected_seq, f"sequence gap: expected {expected_seq}, found {item.seq}"
                )
            if item.prev_hash != prev:
                return VerifyResult(False, checked, item.seq, "previous-hash link broken")
            if chain_hash(prev, item.seq, item.raw, item.index) != item.hash:
                return VerifyResult(False, checked, item.seq, "content does not match its hash (altered)")
            for mark in marks.get(item.seq, ()):
                if mark.hash != item.hash:
                    return VerifyResult(
                        False, checked, item.seq, f"event {item.seq} differs from {mark.name()}: rewritten"
                    )
            prev, expected_seq, checked = item.hash, expected_seq + 1, checked + 1
        beyond = [m for seq in sorted(marks) if seq > checked for m in marks[seq]]
        if beyond:
            latest = beyond[-1]
            return VerifyResult(
                False,
                checked,
                checked + 1,
                f"the chain was shortened: {latest.name()} counts {latest.seq} events, the chain holds {checked}",
                len(marks),
            )
        return VerifyResult(True, checked, checkpoints=sum(len(v) for v in marks.values()), warning=warning)

    def head(self) -> tuple[int, str] | None:
        """The newest event's sequence number and hash, or None for an empty chain."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(audit_events.c.seq, audit_events.c.hash).order_by(audit_events.c.seq.desc()).limit(1)
            ).first()
        return (row.seq, row.hash) if row else None

    def count(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(text("SELECT COUNT(*) FROM audit_events")).scalar_one()

    @staticmethod
    def _row(r) -> StoredEvent:
        index = {c: getattr(r, c) for c in INDEX_COLUMNS}
        event = {**json.loads(r.event_json), "id": f"audit-{r.seq}"}  # the id is the sequence, not hashed
        return StoredEvent(r.seq, r.recorded, event, r.prev_hash, r.hash, index, r.event_json)


def _set_wal(cur, attempts: int = 50) -> None:
    """Switch a new database to WAL, retrying while another connection holds it (first start, many threads)."""
    import sqlite3
    import time as _time

    for attempt in range(attempts):
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            _time.sleep(0.05)
