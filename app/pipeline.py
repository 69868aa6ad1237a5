"""One look at the record, in this order and nowhere else:

launch completed → identity check → gather (fetch + match) → facts → decide → audit → merge once (with the
withholding applied) → render.

A user refused on identity alone (no clinical capability, no training for standalone use) is refused
before anything is fetched. The decision needs every organisation's answer (an objection may be held
anywhere), so until then a page shows only who is being asked. Facts come from the raw resources, so the
record is merged once per request, after the decision, with what may not be shown already left out.
If the audit trail cannot be written, AuditUnavailable refuses the page.

Which organisations hold a record is itself about the patient: a ``Look`` says whether it may be shown
(``disclose``) — only to users whose decision is, or will be, SHOW, ASK_REASON or BREAK_GLASS. ``?refresh=1``
fetches again at most once per ``[access] refresh_interval_seconds`` per launch (otherwise the record already
fetched is served, and ``refresh_note`` says so); every refresh is audited.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.access.policy import Decision, Step, Verdict, discloses_holders
from app.access.service import AccessService
from app.audit.trail import AuditTrail
from app.record.catalogue import Catalogue
from app.record.service import ConsolidatedRecord, Gathering, RecordService
from launch.context import LaunchContext
from launch.flow import callback_patient


@dataclass(frozen=True)
class Look:
    """The outcome of one request for the record; the view renders it or acts on ``verdict``."""

    verdict: Verdict
    decision: Decision | None = None
    record: ConsolidatedRecord | None = None  # merged when shown; organisations' states only otherwise
    break_glass_until: float | None = None
    gathering: Gathering | None = None
    disclose: bool = False  # may the organisations' names and states be shown to this user
    refresh_note: str | None = None  # a refresh asked for too soon: the record already fetched is shown

    @property
    def waiting(self) -> bool:
        return self.verdict.step is Step.WAIT

    @property
    def shown(self) -> bool:
        return self.verdict.step is Step.SHOW


class RecordPipeline:
    def __init__(self, record: RecordService, access: AccessService, trail: AuditTrail, catalogue: Catalogue) -> None:
        self.record, self.access, self.trail, self.catalogue = record, access, trail, catalogue

    @property
    def landing(self) -> str:
        return self.catalogue.pages[0].name

    def launch_completed(self, ctx: LaunchContext, request_id: str) -> None:
        """Audit the launch, then start gathering the record while the browser follows the redirect —
        unless the user's identity alone already refuses them."""
        self.trail.record(
            "launch",
            request_id=request_id,
            ctx=ctx,
            description=f"launch from {ctx.ehr_name}",
            details={"standalone": ctx.standalone, "scope": ctx.scope},
        )
        patient = callback_patient(ctx.id)  # read at the callback alongside identity: not read again
        if self.access.screen(ctx) is None:
            self.record.gather_early(
                ctx, request_id, then=lambda g: self.access.prepare(ctx, g, request_id), patient=patient
            )

    def open(
        self,
        ctx: LaunchContext,
        section: str,
        request_id: str,
        wait: float,
        refresh: bool = False,
        audit_as: str | None = "view",
        what: str = "",
    ) -> Look:
        """``audit_as``: the audit event for a shown page ("view", "export"), or None for the access forms."""
        screened = self.access.screen(ctx)
        if screened is not None:
            self.access.record_decision(ctx, screened, request_id)
            return Look(screened.at(section, self.landing), screened)
        gathering, note = self._gather(ctx, section, request_id, refresh)
        self.access.prepare(ctx, gathering, request_id)  # alongside the fetch
        gathering.wait(wait)
        if gathering.nhs_number is None:  # nothing is fetched without a valid NHS number: nothing to decide
            return Look(Verdict(Step.SHOW), None, self.record.merged(gathering), gathering=gathering, disclose=True)
        if not gathering.complete:
            disclose = discloses_holders(self.access.foreseen(ctx, gathering))
            return Look(
                Verdict(Step.WAIT), None, self.record.progress(gathering), gathering=gathering, disclose=disclose
            )
        facts = self.access.facts(ctx, gathering, request_id)
        decision = self.access.decide(ctx, facts, gathering.nhs_number, trained=True)  # screen() passed above
        self.access.record_decision(ctx, decision, request_id, gathering, facts)
        verdict = decision.at(section, self.landing)
        disclose = discloses_holders(decision)
        if verdict.step is not Step.SHOW:
            return Look(verdict, decision, self.record.progress(gathering), gathering=gathering, disclose=disclose)
        record = self.record.merged(gathering, decision.withholding)
        if audit_as:
            self.trail.record(
                audit_as,
                request_id=request_id,
                ctx=ctx,
                patient_nhs=gathering.nhs_number,
                purpose=decision.purpose,
                what=f"{section} {what}".strip(),
                details={"withheld-items": record.withheld},
            )
        until = self.access.break_glass_until(ctx, gathering.nhs_number)
        return Look(verdict, decision, record, until, gathering, disclose=disclose, refresh_note=note)

    def _gather(self, ctx: LaunchContext, section: str, request_id: str, refresh: bool) -> tuple[Gathering, str | None]:
        """The launch's gathering; a refresh fetches again only when the last one is old enough. Audited."""
        if not refresh:
            return self.record.gather(ctx, request_id), None
        wait = self.access.refresh_wait(ctx)
        gathering = self.record.gather(ctx, request_id, refresh=wait == 0)
        self.trail.record(
            "view",
            request_id=request_id,
            ctx=ctx,
            patient_nhs=gathering.nhs_number,
            patient_name=gathering.patient_name,
            what=f"refresh {section}",
            description="record fetched again" if wait == 0 else "refresh too soon: the record already fetched served",
            details={"refresh": "fetched" if wait == 0 else "rate-limited"},
        )
        if wait == 0:
            return gathering, None
        return gathering, (
            f"This record was fetched again less than {self.access.rules.refresh_interval_seconds} seconds ago, "
            f"so it has not been fetched again now. You can refresh again in {max(1, round(wait))} seconds."
        )

    def progress(self, ctx: LaunchContext, request_id: str) -> Look | None:
        """Each organisation's state (nothing clinical) and whether this user may see it; None when the user
        is refused on identity alone."""
        if self.access.screen(ctx) is not None:
            return None
        gathering = self.record.gather(ctx, request_id)
        record = self.record.progress(gathering)
        if gathering.nhs_number is None:
            return Look(Verdict(Step.SHOW), None, record, gathering=gathering, disclose=True)
        # The names are said only to users whose decision will be SHOW, ASK_REASON or BREAK_GLASS: that is
        # known before the organisations answer (only identity and "is it the user's own record" refuse).
        disclose = discloses_holders(self.access.foreseen(ctx, gathering))
        return Look(Verdict(Step.WAIT), None, record, gathering=gathering, disclose=disclose)
