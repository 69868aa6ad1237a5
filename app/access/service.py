"""Applies the policy to a launch: gathers facts once, remembers reasons and break-glass, audits every
decision before anything is shown, and raises the alerts the policy calls for."""

from __future__ import annotations

import time
from concurrent.futures import Future
from dataclasses import asdict

from app.audit.alerts import Alert, AlertBox
from app.audit.events import now
from app.audit.trail import AuditTrail
from app.observability import DECISIONS
from app.record.fetch import POOLS
from app.record.service import ConsolidatedRecord
from core.state.store import KeyValueStore
from launch.context import LaunchContext
from launch.ehr_client import EhrFhirClient

from .facts import is_colleague, patient_facts
from .policy import REFUSE, AccessRules, Decision, Overrides, PatientFacts, capabilities, decide
from .training import TrainingRegister

FACTS_TTL = 300
PRIVACY_OFFICER = "privacy-officer"


class AccessError(ValueError):
    """A form that cannot be accepted (plain words for the user)."""


class AccessService:
    def __init__(
        self,
        rules: AccessRules,
        store: KeyValueStore,
        trail: AuditTrail,
        alerts: AlertBox,
        training: TrainingRegister,
        tokens,
    ) -> None:
        self.rules, self.store, self.trail, self.alerts, self.training, self.tokens = (
            rules,
            store,
            trail,
            alerts,
            training,
            tokens,
        )
        self._colleague_checks: dict[str, Future] = {}

    def prepare(self, ctx: LaunchContext, nhs: str | None, request_id: str) -> None:
        """Ask the user's own system whether the patient is a colleague while the record is being fetched,
        so the decision does not add a round trip after the last organisation answers."""
        if not nhs or ctx.id in self._colleague_checks or self.store.get(f"facts:{ctx.id}"):
            return
        client = EhrFhirClient(self.tokens, ctx.id, ctx.iss, request_id)
        self._colleague_checks[ctx.id] = POOLS.executor().submit(is_colleague, client, nhs, ctx.identity or {})
        for key in list(self._colleague_checks)[:-200]:  # bounded: abandoned launches do not accumulate
            self._colleague_checks.pop(key, None)

    # -- facts and overrides --------------------------------------------------------------------------
    def facts(self, ctx: LaunchContext, record: ConsolidatedRecord, request_id: str) -> PatientFacts:
        cached = self.store.get(f"facts:{ctx.id}")
        if cached:
            return PatientFacts(**{k: frozenset(v) if isinstance(v, list) else v for k, v in cached.items()})
        client = EhrFhirClient(self.tokens, ctx.id, ctx.iss, request_id)
        future = self._colleague_checks.pop(ctx.id, None)
        colleague = future.result(timeout=15) if future is not None else None
        facts = patient_facts(ctx, record, client, colleague)
        self.store.set(
            f"facts:{ctx.id}",
            {k: sorted(v) if isinstance(v, frozenset) else v for k, v in asdict(facts).items()},
            ttl=FACTS_TTL,
        )
        return facts

    def _bg_key(self, ctx: LaunchContext, nhs: str | None) -> str:
        user = (ctx.identity or {}).get("sds_user_id") or (ctx.identity or {}).get("sub")
        return f"break-glass:{user}:{nhs}"

    def overrides(self, ctx: LaunchContext, nhs: str | None) -> Overrides:
        reason = self.store.get(f"reason:{ctx.id}")
        return Overrides(
            reason=reason["code"] if reason else None, break_glass=self.store.get(self._bg_key(ctx, nhs)) is not None
        )

    def break_glass_until(self, ctx: LaunchContext, nhs: str | None) -> float | None:
        bg = self.store.get(self._bg_key(ctx, nhs))
        return bg["until"] if bg else None

    # -- the decision ---------------------------------------------------------------------------------
    def evaluate(self, ctx: LaunchContext, record: ConsolidatedRecord, request_id: str) -> Decision:
        identity = ctx.identity or {}
        if ctx.standalone and not self.training.attested(identity.get("sds_user_id")):
            decision = Decision(
                REFUSE,
                None,
                None,
                "Before using the Shared Care Record outside an integrated "
                "clinical system you must complete its training. Your training has not been recorded; "
                "ask your privacy officer.",
            )
        else:
            facts = self.facts(ctx, record, request_id)
            decision = decide(identity, facts, self.overrides(ctx, record.nhs_number), self.rules)
            if facts.is_user:
                self._alert_once(
                    ctx, "self-access", PRIVACY_OFFICER, record, "tried to open their own record (refused)."
                )
        DECISIONS.labels(decision.outcome).inc()
        self._audit_decision(ctx, record, decision, request_id)
        if decision.alert in ("family", "colleague") and decision.outcome != "permit":
            who = "a relative" if decision.alert == "family" else "a colleague"
            self._alert_once(
                ctx,
                decision.alert,
                PRIVACY_OFFICER,
                record,
                f"tried to open the record of {who} (break-glass required).",
            )
        return decision

    def _audit_decision(
        self, ctx: LaunchContext, record: ConsolidatedRecord, decision: Decision, request_id: str
    ) -> None:
        marker = f"decided:{ctx.id}:{decision.outcome}:{decision.purpose}"
        if self.store.get(marker):
            return
        kind = "access-decision" if decision.outcome != REFUSE else "refusal"
        self.trail.record(
            kind,
            request_id=request_id,
            ctx=ctx,
            patient_nhs=record.nhs_number,
            patient_name=_name(record),
            purpose=decision.purpose,
            outcome="success" if decision.permitted else "minor-failure",
            description=f"{decision.outcome}: {decision.basis}",
            details={"scope": decision.scope, "withhold-sensitive": decision.withhold_sensitive},
        )
        self.store.set(marker, {"at": time.time()}, ttl=3600)

    # -- forms --------------------------------------------------------------------------------------------
    def record_reason(
        self, ctx: LaunchContext, record: ConsolidatedRecord, code: str, note: str, request_id: str
    ) -> None:
        if code not in self.rules.reason_codes:
            raise AccessError("Choose one of the reasons listed.")
        note = (note or "").strip()[:500]
        event = self.trail.record(
            "reason-recorded",
            request_id=request_id,
            ctx=ctx,
            patient_nhs=record.nhs_number,
            patient_name=_name(record),
            purpose=code,
            description=f"Reason for access recorded: {code}" + (f" – {note}" if note else ""),
            details={"reason-text": note},
        )
        self.store.set(f"reason:{ctx.id}", {"code": code, "note": note}, ttl=12 * 3600)
        what = f"opened the record with the self-declared reason '{code}'" + (f": {note}" if note else "") + "."
        # The care team learns who looked; privacy officers review self-declared reasons (B0016).
        for recipient in [*(f"care-team:{ods}" for ods in self._care_team_ods(record)), PRIVACY_OFFICER]:
            self._alert(ctx, "reason", recipient, record, what, event.seq)

    def start_break_glass(
        self, ctx: LaunchContext, record: ConsolidatedRecord, justification: str, request_id: str
    ) -> float:
        caps = capabilities(ctx.identity or {}, self.rules)
        if not caps.emergency:
            self.trail.record(
                "refusal",
                request_id=request_id,
                ctx=ctx,
                patient_nhs=record.nhs_number,
                outcome="minor-failure",
                description="break-glass refused: no emergency access activity",
            )
            raise AccessError("Your role does not include emergency access.")
        text = (justification or "").strip()
        if len(text) < self.rules.break_glass_min_justification:
            raise AccessError(
                f"Write why this access is needed ({self.rules.break_glass_min_justification} characters or more)."
            )
        until = time.time() + self.rules.break_glass_minutes * 60
        event = self.trail.record(
            "break-glass",
            request_id=request_id,
            ctx=ctx,
            patient_nhs=record.nhs_number,
            patient_name=_name(record),
            purpose="ETREAT",
            description=f"Emergency access (break-glass): {text[:900]}",
            details={"justification": text[:1000], "until": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(until))},
        )
        self.store.set(
            self._bg_key(ctx, record.nhs_number),
            {"until": until, "justification": text[:1000]},
            ttl=self.rules.break_glass_minutes * 60,
        )
        self._alert(
            ctx, "break-glass", PRIVACY_OFFICER, record, f"used emergency access (break-glass): {text[:300]}", event.seq
        )
        return until

    # -- alerts ---------------------------------------------------------------------------------------------
    def _care_team_ods(self, record: ConsolidatedRecord) -> list[str]:
        return sorted({r.source.ods_code for r in record.loaded if r.source.ods_code})

    def _alert(
        self,
        ctx: LaunchContext,
        kind: str,
        recipient: str,
        record: ConsolidatedRecord,
        what: str,
        audit_seq: int | None = None,
    ) -> None:
        identity = ctx.identity or {}
        org = identity.get("organisation") or {}
        org_name = org.get("name") or org.get("ods") or "unknown organisation"
        self.alerts.raise_alert(
            Alert(
                id=None,
                created=now(),
                kind=kind,
                recipient=recipient,
                patient_nhs=record.nhs_number,
                user_name=identity.get("name") or "unknown",
                user_org=f"{org.get('name') or ''} ({org.get('ods') or '?'})",
                message=f"{identity.get('name') or 'A user'} ({org_name}) {what}",
                audit_seq=audit_seq,
            )
        )

    def _alert_once(self, ctx: LaunchContext, kind: str, recipient: str, record: ConsolidatedRecord, what: str) -> None:
        marker = f"alerted:{ctx.id}:{kind}"
        if not self.store.get(marker):
            self._alert(ctx, kind, recipient, record, what)
            self.store.set(marker, {"at": time.time()}, ttl=12 * 3600)


def _name(record: ConsolidatedRecord) -> str | None:
    name = (record.patient.get("name") or [{}])[0]
    return " ".join([*name.get("given", []), name.get("family", "")]).strip() or None
