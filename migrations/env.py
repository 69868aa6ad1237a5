"""Alembic environment: the database comes from the viewer's own configuration (SCR_CONFIG + env)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from app.audit.store import database_url
from app.config import load_config, resolve_path


def url() -> str:
    config = load_config()
    audit = config.raw.get("audit", {})
    return database_url(audit.get("database_url") or None,
                        resolve_path(config.path.parent, audit.get("sqlite_path", "../var/audit.sqlite3")))


def run() -> None:
    target = context.config.attributes.get("url") or url()
    if target.startswith("sqlite:///"):
        from pathlib import Path

        Path(target.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(target)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()


run()
