"""Training attestations: users outside an integrated EHR may only use the viewer once their training
is recorded — in config (``[[access.training]]``) or by a privacy officer."""

from __future__ import annotations

import time

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from app.audit.store import AuditStore, AuditUnavailable
from app.schema import training_attestations as training_table


class TrainingRegister:
    def __init__(self, store: AuditStore, configured: list[dict] | None = None) -> None:
        self.store = store
        self.configured = {str(t["sds_user_id"]): str(t["completed"]) for t in configured or [] if t.get("sds_user_id")}

    def attested(self, sds_user_id: str | None) -> bool:
        if not sds_user_id:
            return False
        if sds_user_id in self.configured:
            return True
        try:
            with self.store.engine.connect() as conn:
                return (
                    conn.execute(
                        select(training_table.c.completed).where(training_table.c.sds_user_id == sds_user_id)
                    ).first()
                    is not None
                )
        except SQLAlchemyError as exc:
            raise AuditUnavailable("training register unavailable") from exc

    def record(self, sds_user_id: str, completed: str, recorded_by: str) -> None:
        with self.store.engine.begin() as conn:
            conn.execute(training_table.delete().where(training_table.c.sds_user_id == sds_user_id))
            conn.execute(
                training_table.insert().values(
                    sds_user_id=sds_user_id,
                    completed=completed,
                    recorded_by=recorded_by,
                    recorded_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                )
            )

    def list(self) -> list[dict]:
        with self.store.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(select(training_table))]
        return rows + [
            {"sds_user_id": k, "completed": v, "recorded_by": "configuration", "recorded_at": ""}
            for k, v in self.configured.items()
        ]
