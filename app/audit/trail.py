"""What the rest of the viewer calls: record an audit event for a launch, fail closed if it cannot.

Refusals go through the refusal ledger (refusals.py): the first of a window is written at once, identical
ones are counted and summarised, requests without a known user are counted per address and minute.
"""

from __future__ import annotations

import time

from app.observability import AUDIT_LATENCY, AUDIT_WRITES
from core.state import MemoryStore
from launch.context import LaunchContext
from launch.identity import UserIdentity

from .events import audit_event
from .refusals import BreakGlassEpisodes, RefusalLedger
from .store import AuditStore, AuditUnavailable, StoredEvent


class AuditTrail:
    def __init__(self, store: AuditStore, observer: str) -> None:
        self.store, self.observer = store, observer
        # Replaced by init_app with ones on the shared state store; these serve a trail made on its own.
        state = MemoryStore()
        self.refusals = RefusalLedger(state, self.write)
        self.break_glass = BreakGlassEpisodes(state, self.write)

    def record(
        self,
        kind: str,
        *,
        request_id: str,
        ctx: LaunchContext | None = None,
        user: UserIdentity | None = None,
        client_id: str = "scr-viewer",
        patient_nhs: str | None = None,
        patient_name: str | None = None,
        purpose: str | None = None,
        outcome: str = "success",
        description: str = "",
        what: str | None = None,
        details: dict | None = None,
    ) -> StoredEvent | None:
        """Append an AuditEvent; raises AuditUnavailable, which the caller turns into a refusal.
        A refusal may be counted instead of written (None): see refusals.py."""
        user = user if user is not None else (ctx.identity if ctx else None)
        details = {"launch-context": ctx.id if ctx else None, "iss": ctx.iss if ctx else None, **(details or {})}
        fields = dict(
            client_id=client_id, patient_nhs=patient_nhs, patient_name=patient_name, purpose=purpose, what=what
        )
        if kind == "refusal":
            return self.refusals.refused(
                user=user,
                ctx_id=ctx.id if ctx else None,
                request_id=request_id,
                outcome=outcome,
                description=description,
                details=details,
                **fields,
            )
        return self.write(
            kind, user=user, request_id=request_id, outcome=outcome, description=description, details=details, **fields
        )

    def write(
        self,
        kind: str,
        *,
        request_id: str,
        user: UserIdentity | None = None,
        client_id: str = "scr-viewer",
        patient_nhs: str | None = None,
        patient_name: str | None = None,
        purpose: str | None = None,
        outcome: str = "success",
        description: str = "",
        what: str | None = None,
        details: dict | None = None,
    ) -> StoredEvent:
        """Append one event now, whatever its kind (the ledger's and episodes' way in)."""
        event = audit_event(
            kind,
            user=user,
            client_id=client_id,
            observer=self.observer,
            request_id=request_id,
            outcome=outcome,
            description=description,
            patient_nhs=patient_nhs,
            patient_name=patient_name,
            purpose=purpose,
            what=what,
            details=details,
        )
        started = time.perf_counter()
        try:
            stored = self.store.append(
                event,
                patient_nhs=patient_nhs,
                user_id=user.user_id if user else None,
                org_ods=user.ods if user else None,
                purpose=purpose,
                action_code=kind,
                outcome=event["outcome"],
            )
        except AuditUnavailable:
            AUDIT_WRITES.labels(kind, "failed").inc()
            raise
        AUDIT_LATENCY.observe(time.perf_counter() - started)
        AUDIT_WRITES.labels(kind, "written").inc()
        return stored
