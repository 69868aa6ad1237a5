"""Applies the policy to a launch: gathers facts once, remembers reasons and break-glass, records every
decision in the audit trail before anything is shown, and raises the alerts the policy calls for.

The decision itself is made by ``policy.decide``; this service supplies it with facts and overrides.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import asdict

from sqlalchemy import select

from app.audit.alerts import Alert, AlertBox
from app.audit.events import now
from app.audit.trail import AuditTrail
from app.observability import DECISIONS
from app.record.service import Gathering
from app.schema import alerts as alerts_table
from core.http import fetch_executor
from core.state import KeyValueStore
from launch.context import LaunchContext
from launch.ehr_client import EhrFhirClient

from .facts import (
    LaunchChecks,
    is_colleague,
    patient_facts,
    practice_references,
    read_encounter,
    read_practices,
)
from .policy import (
    REFUSE,
    AccessRules,
    Decision,
    Overrides,
    PatientFacts,
    capabilities,
    decide,
    foreseen,
    justification_problem,
    screen,
)
from .training import TrainingRegister

log = logging.getLogger(__name__)
FACTS_TTL = 300
PRIVACY_OFFICER = "privacy-officer"


class AccessError(ValueError):
    """A form that cannot be accepted (plain words for the user); ``field``: the form field it is about."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class AlertNotFound(LookupError):
    """No alert has that id."""


class AlertNotAddressed(PermissionError):
    """The alert is addressed to someone else (a care team), not to privacy officers."""


class AccessService:
    def __init__(
        self,
        rules: AccessRules,
        audiences: Mapping[str, frozenset[str]],
        store: KeyValueStore,
        trail: AuditTrail,
        alerts: AlertBox,
        training: TrainingRegister,
        tokens,
    ) -> None:
        """``audiences``: page → capability levels that may open it (from the record catalogue)."""
        self.rules, self.audiences, self.store, self.trail = rules, dict(audiences), store, trail
        self.alerts, self.training, self.tokens = alerts, training, tokens
        self._checks: dict[str, dict[str, Future]] = {}  # ctx id → what the launching EHR is being asked

    # -- before anything is fetched ---------------------------------------------------------------------
    def screen(self, ctx: LaunchContext) -> Decision | None:
        """A refusal on the user's identity alone (no clinical role; standalone use without training)."""
        return screen(ctx.identity, self.rules, standalone=ctx.standalone, trained=self._trained(ctx))

    def _trained(self, ctx: LaunchContext) -> bool:
        """Only standalone use needs recorded training (one register lookup)."""
        return not ctx.standalone or self.training.attested(ctx.identity.user_id if ctx.identity else None)

    def prepare(self, ctx: LaunchContext, gathering: Gathering, request_id: str) -> None:
        """Ask the launching EHR, with the user's token, while the record is being fetched (so the decision adds
        no round trip after the last organisation answers): is the patient a colleague; the launch encounter
        (does it exist, whose is it, is it current); the Organization the EHR's Patient names as its GP."""
        nhs = gathering.nhs_number
        if not nhs or ctx.id in self._checks or self.store.get(f"facts:{ctx.id}"):
            return
        client = EhrFhirClient(self.tokens, ctx.id, ctx.iss, request_id)
        submit = fetch_executor().submit
        self._checks[ctx.id] = {
            "colleague": submit(is_colleague, client, nhs, ctx.identity),
            "encounter": submit(read_encounter, client, ctx.encounter),
            "practices": submit(read_practices, client, practice_references(gathering.patient)),
        }
        for key in list(self._checks)[:-200]:  # bounded: abandoned launches do not accumulate
            self._checks.pop(key, None)

    def _launch_checks(self, ctx: LaunchContext) -> LaunchChecks:
        """The answers to ``prepare``'s questions; one that failed or did not come counts as no relationship."""
        futures = self._checks.pop(ctx.id, {})
        answers = {}
        for name, future in futures.items():
            try:
                answers[name] = future.result(timeout=15)
            except Exception as exc:  # noqa: BLE001 - fail closed: no answer is no relationship
                log.warning("launch check %s failed: %s", name, exc.__class__.__name__)
        return LaunchChecks(
            colleague=bool(answers.get("colleague")),
            encounter=answers.get("encounter"),
            practices=answers.get("practices") or {},
        )

    def foreseen(self, ctx: LaunchContext, gathering: Gathering) -> Decision:
        """The decision as far as it is known before every organisation has answered (``policy.foreseen``)."""
        identity = ctx.identity
        is_user = bool(identity and identity.nhs_number) and identity.nhs_number == gathering.nhs_number
        return foreseen(identity, is_user, self.rules, standalone=ctx.standalone, trained=self._trained(ctx))

    def refresh_wait(self, ctx: LaunchContext) -> float:
        """0 when this launch may fetch its record again now (and the refresh is counted); otherwise the seconds
        until it may: at most one refresh per ``[access] refresh_interval_seconds`` per launch context."""
        interval = self.rules.refresh_interval_seconds
        if interval <= 0:
            return 0
        key = f"refreshed:{ctx.id}"
        with self.store.lock(key):
            last = self.store.get(key)
            if last:
                return max(0.001, last["at"] + interval - time.time())
            self.store.set(key, {"at": time.time()}, ttl=interval)
        return 0

    # -- facts, overrides, the decision -------------------------------------------------------------------
    def facts(self, ctx: LaunchContext, gathering: Gathering, request_id: str) -> PatientFacts:
        """From the raw resources of every organisation that answered, once per launch."""
        cached = self.store.get(f"facts:{ctx.id}")
        if cached:
            return PatientFacts(**{k: frozenset(v) if isinstance(v, list) else v for k, v in cached.items()})
        self.prepare(ctx, gathering, request_id)  # no-op when asked already at the launch
        facts = patient_facts(
            ctx,
            gathering.nhs_number,
            gathering.loaded,
            checks=self._launch_checks(ctx),
            recent_hours=self.rules.encounter_recent_hours,
        )
        self.store.set(
            f"facts:{ctx.id}",
            {k: sorted(v) if isinstance(v, frozenset) else v for k, v in asdict(facts).items()},
            ttl=FACTS_TTL,
        )
        return facts

    def overrides(self, ctx: LaunchContext, nhs: str | None) -> Overrides:
        reason = self.store.get(f"reason:{ctx.id}")
        return Overrides(
            reason=reason["code"] if reason else None, break_glass=self.store.get(self._bg_key(ctx, nhs)) is not None
        )

    def break_glass_until(self, ctx: LaunchContext, nhs: str | None) -> float | None:
        bg = self.store.get(self._bg_key(ctx, nhs))
        return bg["until"] if bg else None

    def decide(self, ctx: LaunchContext, facts: PatientFacts, nhs: str | None, trained: bool | None = None) -> Decision:
        """``trained``: already known when ``screen`` has just passed (saves a second register lookup)."""
        trained = self._trained(ctx) if trained is None else trained
        return decide(
            ctx.identity,
            facts,
            self.overrides(ctx, nhs),
            self.rules,
            audiences=self.audiences,
            standalone=ctx.standalone,
            trained=trained,
        )

    def record_decision(
        self,
        ctx: LaunchContext,
        decision: Decision,
        request_id: str,
        gathering: Gathering | None = None,
        facts: PatientFacts | None = None,
    ) -> None:
        """Audit the decision (once per launch and outcome) and raise the alerts it calls for.
        Raises AuditUnavailable, which refuses the page."""
        DECISIONS.labels(decision.outcome).inc()
        nhs = gathering.nhs_number if gathering else None
        marker = f"decided:{ctx.id}:{decision.outcome}:{decision.purpose}"
        if not self.store.get(marker):
            self.trail.record(
                "access-decision" if decision.outcome != REFUSE else "refusal",
                request_id=request_id,
                ctx=ctx,
                patient_nhs=nhs,
                patient_name=gathering.patient_name if gathering else None,
                purpose=decision.purpose,
                outcome="success" if decision.permitted else "minor-failure",
                description=f"{decision.outcome}: {decision.basis}",
                details={"scope": decision.scope, "withhold-sensitive": decision.withhold_sensitive},
            )
            self.store.set(marker, {"at": time.time()}, ttl=3600)
        if facts is not None and facts.is_user:
            self._alert_once(ctx, "self-access", PRIVACY_OFFICER, nhs, "tried to open their own record (refused).")
        if decision.alert in ("family", "colleague") and not decision.permitted:
            who = "a relative" if decision.alert == "family" else "a colleague"
            self._alert_once(
                ctx, decision.alert, PRIVACY_OFFICER, nhs, f"tried to open the record of {who} (break-glass required)."
            )

    # -- forms --------------------------------------------------------------------------------------------
    def record_reason(self, ctx: LaunchContext, gathering: Gathering, code: str, note: str, request_id: str) -> None:
        if code not in self.rules.reason_codes:
            raise AccessError("Choose why you are looking at this record.", field="reason")
        note = (note or "").strip()[:500]
        event = self.trail.record(
            "reason-recorded",
            request_id=request_id,
            ctx=ctx,
            patient_nhs=gathering.nhs_number,
            patient_name=gathering.patient_name,
            purpose=code,
            description=f"Reason for access recorded: {code}" + (f" – {note}" if note else ""),
            details={"reason-text": note},
        )
        self.store.set(f"reason:{ctx.id}", {"code": code, "note": note}, ttl=12 * 3600)
        what = f"opened the record with the self-declared reason '{code}'" + (f": {note}" if note else "") + "."
        # The care team learns who looked; privacy officers review self-declared reasons (B0016).
        holders = sorted({r.source.ods_code for r in gathering.loaded if r.source.ods_code})
        for recipient in [*(f"care-team:{ods}" for ods in holders), PRIVACY_OFFICER]:
            self._alert(ctx, "reason", recipient, gathering.nhs_number, what, event.seq)

    def start_break_glass(self, ctx: LaunchContext, gathering: Gathering, justification: str, request_id: str) -> float:
        nhs = gathering.nhs_number
        if not capabilities(ctx.identity, self.rules).emergency:
            self.trail.record(
                "refusal",
                request_id=request_id,
                ctx=ctx,
                patient_nhs=nhs,
                outcome="minor-failure",
                description="break-glass refused: no emergency access activity",
            )
            raise AccessError("Your role does not include emergency access.")
        text = (justification or "").strip()
        problem = justification_problem(text, self.rules)
        if problem:
            raise AccessError(problem, field="justification")
        until = time.time() + self.rules.break_glass_minutes * 60
        event = self.trail.record(
            "break-glass",
            request_id=request_id,
            ctx=ctx,
            patient_nhs=nhs,
            patient_name=gathering.patient_name,
            purpose="ETREAT",
            description=f"Emergency access (break-glass): {text[:900]}",
            details={"justification": text[:1000], "until": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(until))},
        )
        self.store.set(
            self._bg_key(ctx, nhs),
            {"until": until, "justification": text[:1000]},
            ttl=self.rules.break_glass_minutes * 60,
        )
        self.trail.break_glass.started(  # its end (expiry or ended) is recorded too: app/audit/refusals.py
            user=ctx.identity,
            ctx_id=ctx.id,
            nhs=nhs,
            until=until,
            started_seq=event.seq,
            access_key=self._bg_key(ctx, nhs),
            request_id=request_id,
        )
        self._alert(
            ctx, "break-glass", PRIVACY_OFFICER, nhs, f"used emergency access (break-glass): {text[:300]}", event.seq
        )
        return until

    # -- alerts ---------------------------------------------------------------------------------------------
    def acknowledge_alert(self, alert_id: int, by: str) -> bool:
        """A privacy officer acknowledges an alert addressed to privacy officers. Raises AlertNotFound for an
        unknown id and AlertNotAddressed for an alert addressed elsewhere (a care team's)."""
        with self.alerts.store.engine.connect() as conn:
            row = conn.execute(select(alerts_table.c.recipient).where(alerts_table.c.id == alert_id)).first()
        if row is None:
            raise AlertNotFound(alert_id)
        if row.recipient != PRIVACY_OFFICER:
            raise AlertNotAddressed(alert_id)
        return self.alerts.acknowledge(alert_id, by)

    def _bg_key(self, ctx: LaunchContext, nhs: str | None) -> str:
        return f"break-glass:{ctx.identity.user_id if ctx.identity else None}:{nhs}"

    def _alert(
        self, ctx: LaunchContext, kind: str, recipient: str, nhs: str | None, what: str, audit_seq: int | None = None
    ) -> None:
        identity = ctx.identity
        name = identity.name if identity else None
        org = identity.organisation if identity else None
        self.alerts.raise_alert(
            Alert(
                id=None,
                created=now(),
                kind=kind,
                recipient=recipient,
                patient_nhs=nhs,
                user_name=name or "unknown",
                user_org=f"{(org.name if org else None) or ''} ({(org.ods if org else None) or '?'})",
                message=f"{name or 'A user'} ({identity.organisation_label if identity else 'unknown organisation'}) "
                f"{what}",
                audit_seq=audit_seq,
            )
        )

    def _alert_once(self, ctx: LaunchContext, kind: str, recipient: str, nhs: str | None, what: str) -> None:
        marker = f"alerted:{ctx.id}:{kind}"
        if not self.store.get(marker):
            self._alert(ctx, kind, recipient, nhs, what)
            self.store.set(marker, {"at": time.time()}, ttl=12 * 3600)
