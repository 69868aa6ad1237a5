"""The audit store on both databases: SQLite always, PostgreSQL when reachable — and required in CI."""

from __future__ import annotations

import os
import uuid

import pytest
from sqlalchemy import create_engine, text

from app.audit.store import AuditStore
from tests.conftest import IN_CI

PG_ADMIN_URL = os.environ.get("SCR_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def _pg_database() -> str | None:
    """A fresh database on the local PostgreSQL, or None when there is no server (fails in CI)."""
    try:
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        name = f"scr_test_{uuid.uuid4().hex[:10]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    except Exception as exc:  # noqa: BLE001
        if IN_CI:
            pytest.fail(f"CI=true but PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}")
        return None


def _drop(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path) -> AuditStore:
    if request.param == "sqlite":
        s = AuditStore(f"sqlite:///{tmp_path / 'audit.sqlite3'}")
        s.create_schema()
        yield s
        s.engine.dispose()
        return
    url = _pg_database()
    if url is None:
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL} (required when CI=true)")
    s = AuditStore(url)
    s.create_schema()
    yield s
    s.engine.dispose()
    _drop(url)
