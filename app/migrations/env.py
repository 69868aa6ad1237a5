"""Alembic environment: the database comes from the viewer's own configuration (SCR_CONFIG + env).

``app.schema.metadata`` is the single definition of every table, so ``alembic check`` (and
``alembic revision --autogenerate``) compare the migrated database with it; ``tests/app/audit/test_schema.py``
runs the check on SQLite and PostgreSQL. The append-only triggers (0001) are not SQLAlchemy objects and
are not compared.
"""

from __future__ import annotations

from pathlib import Path

from alembic import context
from sqlalchemy import create_engine

import app.schema
from app.config import load_config

target_metadata = app.schema.metadata


def url() -> str:
    return load_config().audit.url


def run() -> None:
    target = context.config.attributes.get("url") or url()
    if target.startswith("sqlite:///"):
        Path(target.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(target)
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


run()
