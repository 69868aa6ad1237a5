"""The local access register: (issuer, user id or fhirUser) → national RBAC role and activity codes, with an
expiry — the identity source ``register`` (launch/roles.py) — and the access request queue that fills it.

A user whose clinical system gives no role (or who uses the viewer standalone) completes the training, then
asks for access (``submit``); the service desk approves (``approve``: a register entry for the user's id and
their training attestation, in one transaction) or rejects. Privacy officers and registration authority
staff also add, renew and revoke entries directly, in the console or with ``flask access register``.

``lookup`` is what ``launch`` calls while resolving a user's identity: the current entry (not revoked, not
expired — ``expires`` is inclusive and compared with today's date in UTC) for any of the user's subjects at
that issuer, as a ``RoleGrant(source="register")``. Two current entries for one person (say one keyed on the
sub, one on the fhirUser): the one that lasts longest wins; codes are never mixed.

Every change is audited, and the audit comes first: the event is written (``AuditTrail.record``, fail
closed: ``AuditUnavailable`` propagates and nothing is changed), then the change is applied in one
transaction. The audit write and the change cannot share a transaction (the chain append takes SQLite's
write lock on its own connection), so a change that fails after its event was written is followed by a
second event saying it was not applied. Everything that can be checked beforehand is checked before the
first event, so that second event means a database failure or a concurrent decision, nothing else.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from app.audit.events import now
from app.audit.store import AuditStore, AuditUnavailable
from app.audit.trail import AuditTrail
from app.schema import access_requests, register_entries, training_attestations
from launch.context import LaunchContext
from launch.identity import UserIdentity
from launch.roles import REGISTER, Organisation, RoleGrant

from .policy import AccessRules, capabilities

log = logging.getLogger(__name__)

REGISTER_CHANGE, ACCESS_REQUEST = "register-change", "access-request"

PENDING, APPROVED, REJECTED = "pending", "approved", "rejected"
CURRENT, EXPIRED, REVOKED = "current", "expired", "revoked"
PURPOSE = "HOPERAT"  # healthcare operations: managing who may use the service

ROLE_CODE = re.compile(r"R\d{4,5}")
ACTIVITY_CODE = re.compile(r"B\d{4}")
ODS_CODE = re.compile(r"[A-Z0-9]{3,10}")
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
SUBJECT = re.compile(r"\S{1,500}")
TRAINING_KEY_MAX = 500  # training_attestations.sds_user_id is String(500)
MIN_JUSTIFICATION = 20

# What a user may ask for (national RBAC job roles, docs standards §3.3); the service desk decides the codes.
REQUESTABLE_ROLES: dict[str, str] = {
    "R8000": "Clinical practitioner (doctor)",
    "R8001": "Nurse",
    "R8003": "Other health professional (pharmacist, therapist, paramedic…)",
    "R8004": "Healthcare student",
    "R8006": "Medical secretary",
    "R8008": "Administrative or clinical support staff",
    "R8009": "Receptionist",
    "R8010": "Clerical staff",
}
# The approval form's starting point for the activity codes of a requested role (the approver decides).
SUGGESTED_ACTIVITIES: dict[str, tuple[str, ...]] = {
    "R8000": ("B0360", "B0370"),
    "R8001": ("B0370", "B0401"),
    "R8003": ("B0370", "B0401"),
    "R8004": ("B0370",),
}


class RegisterError(ValueError):
    """A change that cannot be accepted: ``problems`` maps each field to what is wrong, in plain words."""

    def __init__(self, problems: dict[str, str] | str) -> None:
        self.problems = {"form": problems} if isinstance(problems, str) else dict(problems)
        super().__init__(" ".join(self.problems.values()))


@dataclass(frozen=True)
class RegisterEntry:
    id: int
    issuer: str
    subject: str
    role_codes: tuple[str, ...]
    activity_codes: tuple[str, ...]
    organisation_ods: str | None
    expires: str  # YYYY-MM-DD, the last day it is current (UTC)
    added_by: str
    added_at: str
    updated_by: str | None
    updated_at: str | None
    revoked_by: str | None
    revoked_at: str | None
    request_id: int | None  # the access request it was approved from
    state: str  # current | expired | revoked, as of when it was read

    @property
    def current(self) -> bool:
        return self.state == CURRENT


@dataclass(frozen=True)
class AccessRequest:
    id: int
    issuer: str
    system: str
    subject: str
    subjects: tuple[str, ...]
    name: str
    organisation: str
    organisation_ods: str | None
    requested_role: str
    reason: str
    training_completed: str
    training_confirmed: bool
    status: str
    submitted_at: str
    decided_by: str | None
    decided_at: str | None
    note: str | None

    @property
    def requested_role_label(self) -> str:
        return REQUESTABLE_ROLES.get(self.requested_role, self.requested_role)

    @property
    def suggested_activities(self) -> tuple[str, ...]:
        return SUGGESTED_ACTIVITIES.get(self.requested_role, ())


def manages_register(identity: UserIdentity | None, rules: AccessRules) -> bool:
    """Privacy officers (as their console decides) and the roles in ``[access] register_manager_roles``."""
    return identity is not None and capabilities(identity, rules).register_manager


def operator(name: str) -> UserIdentity:
    """Who made a change from the command line, as the audit trail records them."""
    return UserIdentity(name=name, sub=f"cli:{name}")


def utc_today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


class AccessRegister:
    def __init__(
        self,
        store: AuditStore,
        trail: AuditTrail,
        *,
        default_days: int = 365,
        today: Callable[[], dt.date] = utc_today,
    ) -> None:
        self.store, self.trail, self.default_days, self.today = store, trail, default_days, today

    # -- the identity source ----------------------------------------------------------------------------
    def lookup(self, issuer: str, subjects: tuple[str, ...]) -> RoleGrant | None:
        """The current grant for any of ``subjects`` at ``issuer`` (a ``RegisterLookup``), or None.
        Raises AuditUnavailable when the register cannot be read (the launch is refused, not downgraded)."""
        subjects = tuple(s for s in subjects if s)
        if not issuer or not subjects:
            return None
        t = register_entries
        query = (
            select(t)
            .where(
                t.c.issuer == issuer.rstrip("/"),
                t.c.subject.in_(subjects),
                t.c.revoked_at.is_(None),
                t.c.expires >= self.today().isoformat(),
            )
            .order_by(t.c.expires.desc(), t.c.id.desc())
            .limit(1)
        )
        row = self._read_one(query)
        if row is None:
            return None
        entry = self._entry(row)
        org = Organisation(ods=entry.organisation_ods) if entry.organisation_ods else None
        return RoleGrant(entry.role_codes, entry.activity_codes, REGISTER, org, entry.expires)

    # -- reading ---------------------------------------------------------------------------------------------
    def entries(self, *, issuer: str | None = None, include_inactive: bool = True) -> list[RegisterEntry]:
        t = register_entries
        query = select(t).order_by(t.c.issuer, t.c.subject)
        if issuer:
            query = query.where(t.c.issuer == issuer.rstrip("/"))
        rows = [self._entry(r) for r in self._read_all(query)]
        return rows if include_inactive else [e for e in rows if e.current]

    def entry(self, entry_id: int) -> RegisterEntry | None:
        row = self._read_one(select(register_entries).where(register_entries.c.id == entry_id))
        return self._entry(row) if row is not None else None

    def requests(self, status: str | None = PENDING) -> list[AccessRequest]:
        """Requests in ``status`` (None: all), oldest first: the service desk works the queue in order."""
        t = access_requests
        query = select(t).order_by(t.c.id)
        if status:
            query = query.where(t.c.status == status)
        return [self._request(r) for r in self._read_all(query)]

    def get_request(self, number: int) -> AccessRequest | None:
        row = self._read_one(select(access_requests).where(access_requests.c.id == number))
        return self._request(row) if row is not None else None

    def pending_for(self, issuer: str, subjects: Iterable[str]) -> AccessRequest | None:
        """The user's pending request at this issuer, if they have one (``subjects``: all the user's ids; a request
        is kept under the one an approval writes, which is among them)."""
        subjects = [s for s in subjects if s]
        if not subjects:
            return None
        t = access_requests
        row = self._read_one(
            select(t)
            .where(t.c.issuer == issuer.rstrip("/"), t.c.subject.in_(subjects), t.c.status == PENDING)
            .order_by(t.c.id.desc())
            .limit(1)
        )
        return self._request(row) if row is not None else None

    def default_expiry(self) -> str:
        return (self.today() + dt.timedelta(days=self.default_days)).isoformat()

    # -- register changes -----------------------------------------------------------------------------------
    def add(
        self,
        issuer: str,
        subject: str,
        role_codes: Iterable[str] | str,
        activity_codes: Iterable[str] | str,
        expires: str,
        *,
        by: UserIdentity,
        request_id: str,
        organisation_ods: str | None = None,
        ctx: LaunchContext | None = None,
    ) -> RegisterEntry:
        """Add an entry, or replace the codes, organisation and expiry of the one for this issuer and subject
        (a revoked one is reinstated)."""
        problems: dict[str, str] = {}
        issuer = _issuer(issuer, problems)
        subject = _subject(subject, problems)
        roles = _codes(role_codes, ROLE_CODE, "role_codes", "role codes (R followed by 4 or 5 digits)", problems)
        if not roles and "role_codes" not in problems:
            problems["role_codes"] = "Give at least one role code."
        activities = _codes(
            activity_codes, ACTIVITY_CODE, "activity_codes", "activity codes (B and 4 digits)", problems
        )
        expires = _expiry(expires, self.today(), problems)
        ods = _ods(organisation_ods, problems)
        if problems:
            raise RegisterError(problems)
        existing = self._existing(issuer, subject)
        verb = "added" if existing is None else ("reinstated" if existing.revoked_at else "updated")
        who = _who(by)

        def apply(conn: Connection) -> int:
            values = {
                "role_codes": " ".join(roles),
                "activity_codes": " ".join(activities),
                "organisation_ods": ods,
                "expires": expires,
            }
            if existing is None:
                result = conn.execute(
                    register_entries.insert().values(
                        issuer=issuer, subject=subject, added_by=who, added_at=now(), **values
                    )
                )
                return result.inserted_primary_key[0]
            conn.execute(
                register_entries.update()
                .where(register_entries.c.id == existing.id)
                .values(updated_by=who, updated_at=now(), revoked_by=None, revoked_at=None, **values)
            )
            return existing.id

        entry_id = self._change(
            REGISTER_CHANGE,
            f"register entry {verb}: {subject} at {issuer}",
            _details(issuer, subject, roles, activities, expires, ods, action=verb),
            by,
            request_id,
            ctx,
            apply,
        )
        return self.entry(entry_id)  # type: ignore[return-value]

    def renew(
        self, entry_id: int, expires: str, *, by: UserIdentity, request_id: str, ctx: LaunchContext | None = None
    ) -> RegisterEntry:
        """A new expiry for an entry that has not been revoked (a revoked one is added again instead)."""
        existing = self._require_entry(entry_id)
        if existing.revoked_at:
            raise RegisterError("This entry was revoked: add it again to give access back.")
        problems: dict[str, str] = {}
        expires = _expiry(expires, self.today(), problems)
        if problems:
            raise RegisterError(problems)
        who = _who(by)

        def apply(conn: Connection) -> int:
            changed = conn.execute(
                register_entries.update()
                .where(register_entries.c.id == entry_id, register_entries.c.revoked_at.is_(None))
                .values(expires=expires, updated_by=who, updated_at=now())
            ).rowcount
            if changed != 1:
                raise _Conflict("the entry was revoked meanwhile")
            return entry_id

        self._change(
            REGISTER_CHANGE,
            f"register entry renewed: {existing.subject} at {existing.issuer}",
            {
                **_details(
                    existing.issuer,
                    existing.subject,
                    existing.role_codes,
                    existing.activity_codes,
                    expires,
                    existing.organisation_ods,
                    action="renewed",
                ),
                "register-entry": entry_id,
                "previous-expiry": existing.expires,
            },
            by,
            request_id,
            ctx,
            apply,
        )
        return self.entry(entry_id)  # type: ignore[return-value]

    def revoke(
        self,
        entry_id: int,
        *,
        by: UserIdentity,
        request_id: str,
        reason: str = "",
        ctx: LaunchContext | None = None,
    ) -> RegisterEntry:
        existing = self._require_entry(entry_id)
        if existing.revoked_at:
            raise RegisterError(f"This entry was already revoked by {existing.revoked_by} at {existing.revoked_at}.")
        reason = _text(reason, 500)
        who = _who(by)

        def apply(conn: Connection) -> int:
            changed = conn.execute(
                register_entries.update()
                .where(register_entries.c.id == entry_id, register_entries.c.revoked_at.is_(None))
                .values(revoked_by=who, revoked_at=now())
            ).rowcount
            if changed != 1:
                raise _Conflict("the entry was revoked meanwhile")
            return entry_id

        self._change(
            REGISTER_CHANGE,
            f"register entry revoked: {existing.subject} at {existing.issuer}" + (f" – {reason}" if reason else ""),
            {
                **_details(
                    existing.issuer,
                    existing.subject,
                    existing.role_codes,
                    existing.activity_codes,
                    existing.expires,
                    existing.organisation_ods,
                    action="revoked",
                ),
                "register-entry": entry_id,
                "note": reason,
            },
            by,
            request_id,
            ctx,
            apply,
        )
        return self.entry(entry_id)  # type: ignore[return-value]

    # -- access requests --------------------------------------------------------------------------------------
    def submit(
        self,
        identity: UserIdentity,
        issuer: str,
        system: str,
        *,
        requested_role: str,
        organisation: str,
        organisation_ods: str | None,
        reason: str,
        training_completed: str,
        training_confirmed: bool,
        request_id: str,
        ctx: LaunchContext | None = None,
    ) -> AccessRequest:
        """Queue a user's request for access; what they typed is checked and every problem reported at once."""
        subject = identity.user_id or identity.fhir_user
        if not subject or not issuer:
            raise RegisterError("Your clinical system did not say who you are, so access cannot be requested here.")
        problems: dict[str, str] = {}
        if requested_role not in REQUESTABLE_ROLES:
            problems["requested_role"] = "Choose the role you need."
        organisation = _text(organisation, 200)
        if not organisation:
            problems["organisation"] = "Give the name of the organisation you work for."
        ods = _ods(organisation_ods, problems)
        reason = _text(reason, 2000)
        if len(reason) < MIN_JUSTIFICATION:
            problems["reason"] = f"Say why you need access for your work ({MIN_JUSTIFICATION} characters or more)."
        completed = _training_date(training_completed, self.today(), problems)
        if not training_confirmed:
            problems["training_confirmed"] = "Confirm that you have completed the training."
        if problems:
            raise RegisterError(problems)
        issuer = issuer.rstrip("/")
        waiting = self.pending_for(issuer, identity.subjects or (subject,))
        if waiting is not None:
            raise RegisterError(
                f"You already asked for access on {waiting.submitted_at[:10]}; it is waiting for review."
            )
        subjects = list(dict.fromkeys([subject, *identity.subjects]))

        def apply(conn: Connection) -> int:
            return conn.execute(
                access_requests.insert().values(
                    issuer=issuer,
                    system=_text(system, 200) or issuer[:200],
                    subject=subject,
                    subjects=json.dumps(subjects),
                    name=_text(identity.name, 200),
                    organisation=organisation,
                    organisation_ods=ods,
                    requested_role=requested_role,
                    reason=reason,
                    training_completed=completed,
                    training_confirmed=True,
                    status=PENDING,
                    submitted_at=now(),
                )
            ).inserted_primary_key[0]

        number = self._change(
            ACCESS_REQUEST,
            f"access requested: {requested_role} for {subject} at {issuer}",
            {
                "action": "submitted",
                "register-issuer": issuer,
                "register-subject": subject,
                "requested-role": requested_role,
                "organisation": f"{organisation} ({ods})" if ods else organisation,
                "training-completed": completed,
                "justification": reason,
            },
            identity,
            request_id,
            ctx,
            apply,
        )
        return self.get_request(number)  # type: ignore[return-value]

    def approve(
        self,
        number: int,
        role_codes: Iterable[str] | str,
        activity_codes: Iterable[str] | str,
        expires: str,
        *,
        by: UserIdentity,
        request_id: str,
        organisation_ods: str | None = None,
        note: str = "",
        ctx: LaunchContext | None = None,
    ) -> RegisterEntry:
        """Approve a pending request: in one transaction, the register entry for the user's id (added, or the
        existing one replaced), their training attestation (under the same id) and the request's decision.
        ``organisation_ods``: None keeps the one the user gave; "" records none."""
        req = self._require_pending(number)
        problems: dict[str, str] = {}
        roles = _codes(role_codes, ROLE_CODE, "role_codes", "role codes (R followed by 4 or 5 digits)", problems)
        if not roles and "role_codes" not in problems:
            problems["role_codes"] = "Give at least one role code."
        activities = _codes(
            activity_codes, ACTIVITY_CODE, "activity_codes", "activity codes (B and 4 digits)", problems
        )
        expires = _expiry(expires, self.today(), problems)
        ods = req.organisation_ods if organisation_ods is None else _ods(organisation_ods, problems)
        if len(req.subject) > TRAINING_KEY_MAX:
            problems["form"] = (
                f"The user's id is longer than the training register holds ({TRAINING_KEY_MAX} characters); "
                "add a register entry and record the training separately."
            )
        if problems:
            raise RegisterError(problems)
        note = _text(note, 1000)
        existing = self._existing(req.issuer, req.subject)
        who = _who(by)

        def apply(conn: Connection) -> int:
            decided = conn.execute(
                access_requests.update()
                .where(access_requests.c.id == number, access_requests.c.status == PENDING)
                .values(status=APPROVED, decided_by=who, decided_at=now(), note=note or None)
            ).rowcount
            if decided != 1:
                raise _Conflict("the request was decided meanwhile")
            values = {
                "role_codes": " ".join(roles),
                "activity_codes": " ".join(activities),
                "organisation_ods": ods,
                "expires": expires,
                "request_id": number,
            }
            if existing is None:
                entry_id = conn.execute(
                    register_entries.insert().values(
                        issuer=req.issuer, subject=req.subject, added_by=who, added_at=now(), **values
                    )
                ).inserted_primary_key[0]
            else:
                entry_id = existing.id
                conn.execute(
                    register_entries.update()
                    .where(register_entries.c.id == existing.id)
                    .values(updated_by=who, updated_at=now(), revoked_by=None, revoked_at=None, **values)
                )
            # The training attestation, under the id the access service looks it up by (UserIdentity.user_id).
            t = training_attestations
            conn.execute(t.delete().where(t.c.sds_user_id == req.subject))
            conn.execute(
                t.insert().values(
                    sds_user_id=req.subject, completed=req.training_completed, recorded_by=who, recorded_at=now()
                )
            )
            return entry_id

        entry_id = self._change(
            ACCESS_REQUEST,
            f"access request {number} approved: {req.subject} at {req.issuer}",
            {
                **_details(req.issuer, req.subject, roles, activities, expires, ods, action="approved"),
                "access-request": number,
                "training-completed": req.training_completed,
                "note": note,
            },
            by,
            request_id,
            ctx,
            apply,
        )
        return self.entry(entry_id)  # type: ignore[return-value]

    def reject(
        self, number: int, *, by: UserIdentity, request_id: str, note: str, ctx: LaunchContext | None = None
    ) -> AccessRequest:
        """Reject a pending request; the note (required) says why, for the service desk's reply."""
        req = self._require_pending(number)
        note = _text(note, 1000)
        if not note:
            raise RegisterError({"note": "Say why the request is rejected (the service desk tells the user)."})
        who = _who(by)

        def apply(conn: Connection) -> int:
            decided = conn.execute(
                access_requests.update()
                .where(access_requests.c.id == number, access_requests.c.status == PENDING)
                .values(status=REJECTED, decided_by=who, decided_at=now(), note=note)
            ).rowcount
            if decided != 1:
                raise _Conflict("the request was decided meanwhile")
            return number

        self._change(
            ACCESS_REQUEST,
            f"access request {number} rejected: {req.subject} at {req.issuer} – {note}",
            {
                "action": "rejected",
                "register-issuer": req.issuer,
                "register-subject": req.subject,
                "access-request": number,
                "note": note,
            },
            by,
            request_id,
            ctx,
            apply,
        )
        return self.get_request(number)  # type: ignore[return-value]

    # -- the one way a change is made: audit first, then one transaction --------------------------------------
    def _change(
        self,
        kind: str,
        description: str,
        details: dict,
        by: UserIdentity,
        request_id: str,
        ctx: LaunchContext | None,
        apply: Callable[[Connection], int],
    ) -> int:
        event = self.trail.record(  # AuditUnavailable propagates: nothing has been changed
            kind,
            request_id=request_id,
            ctx=ctx,
            user=by,
            purpose=PURPOSE,
            description=description,
            details=details,
        )
        try:
            with self.store.engine.begin() as conn:
                return apply(conn)
        except (_Conflict, IntegrityError) as exc:
            self._not_applied(kind, request_id, ctx, by, event.seq, str(exc), "minor-failure")
            raise RegisterError(
                "Someone else changed this at the same moment; nothing was changed. Reload and try again."
            ) from exc
        except SQLAlchemyError as exc:
            self._not_applied(kind, request_id, ctx, by, event.seq, exc.__class__.__name__, "serious-failure")
            raise AuditUnavailable(f"access register write failed: {exc.__class__.__name__}") from exc

    def _not_applied(
        self, kind: str, request_id: str, ctx: LaunchContext | None, by: UserIdentity, seq: int, why: str, outcome: str
    ) -> None:
        """The change audited as event ``seq`` was not made: say so in the trail (best effort)."""
        try:
            self.trail.record(
                kind,
                request_id=request_id,
                ctx=ctx,
                user=by,
                purpose=PURPOSE,
                outcome=outcome,
                description=f"not applied (audit event {seq}): {why}"[:1000],
                details={"action": "not-applied", "audit-event": seq},
            )
        except AuditUnavailable:
            log.error(
                "request %s: %s of audit event %s was not applied and that could not be audited", request_id, kind, seq
            )

    # -- helpers ---------------------------------------------------------------------------------------------
    def _read_one(self, query):
        try:
            with self.store.engine.connect() as conn:
                return conn.execute(query).first()
        except SQLAlchemyError as exc:
            raise AuditUnavailable(f"access register unavailable: {exc.__class__.__name__}") from exc

    def _read_all(self, query) -> list:
        try:
            with self.store.engine.connect() as conn:
                return conn.execute(query).all()
        except SQLAlchemyError as exc:
            raise AuditUnavailable(f"access register unavailable: {exc.__class__.__name__}") from exc

    def _existing(self, issuer: str, subject: str) -> RegisterEntry | None:
        t = register_entries
        row = self._read_one(select(t).where(t.c.issuer == issuer, t.c.subject == subject))
        return self._entry(row) if row is not None else None

    def _require_entry(self, entry_id: int) -> RegisterEntry:
        entry = self.entry(entry_id)
        if entry is None:
            raise RegisterError(f"There is no register entry {entry_id}.")
        return entry

    def _require_pending(self, number: int) -> AccessRequest:
        req = self.get_request(number)
        if req is None:
            raise RegisterError(f"There is no access request {number}.")
        if req.status != PENDING:
            raise RegisterError(f"Access request {number} was already {req.status} by {req.decided_by}.")
        return req

    def _entry(self, r) -> RegisterEntry:
        today = self.today().isoformat()
        state = REVOKED if r.revoked_at else (CURRENT if r.expires >= today else EXPIRED)
        return RegisterEntry(
            id=r.id,
            issuer=r.issuer,
            subject=r.subject,
            role_codes=tuple(r.role_codes.split()),
            activity_codes=tuple(r.activity_codes.split()),
            organisation_ods=r.organisation_ods,
            expires=r.expires,
            added_by=r.added_by,
            added_at=r.added_at,
            updated_by=r.updated_by,
            updated_at=r.updated_at,
            revoked_by=r.revoked_by,
            revoked_at=r.revoked_at,
            request_id=r.request_id,
            state=state,
        )

    @staticmethod
    def _request(r) -> AccessRequest:
        return AccessRequest(
            id=r.id,
            issuer=r.issuer,
            system=r.system,
            subject=r.subject,
            subjects=tuple(json.loads(r.subjects or "[]")),
            name=r.name,
            organisation=r.organisation,
            organisation_ods=r.organisation_ods,
            requested_role=r.requested_role,
            reason=r.reason,
            training_completed=r.training_completed,
            training_confirmed=bool(r.training_confirmed),
            status=r.status,
            submitted_at=r.submitted_at,
            decided_by=r.decided_by,
            decided_at=r.decided_at,
            note=r.note,
        )


class _Conflict(RuntimeError):
    """The row changed between the checks and the write (a concurrent decision)."""


# -- validation: plain words, every field at once ------------------------------------------------------------
def _who(by: UserIdentity) -> str:
    return (f"{by.name} ({by.user_id})" if by.user_id else by.name)[:200]


def _text(value: str | None, limit: int) -> str:
    """Trimmed, control characters removed (line breaks kept), at most ``limit`` characters."""
    cleaned = "".join(c for c in (value or "") if c in "\n\t" or c.isprintable())
    return cleaned.strip()[:limit]


def _issuer(value: str, problems: dict[str, str]) -> str:
    value = (value or "").strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or len(value) > 500:
        problems["issuer"] = "Give the clinical system's issuer: its FHIR base URL (http or https)."
    return value


def _subject(value: str, problems: dict[str, str]) -> str:
    value = (value or "").strip()
    if not SUBJECT.fullmatch(value):
        problems["subject"] = "Give the user's id (their SDS user id, sign-in subject or fhirUser), without spaces."
    return value


def _codes(
    value: Iterable[str] | str | None, pattern: re.Pattern, field: str, what: str, problems: dict[str, str]
) -> tuple[str, ...]:
    items = value.replace(",", " ").split() if isinstance(value, str) else [str(v) for v in value or ()]
    codes = [c.strip().upper().split(":")[-1] for c in items if c.strip()]
    wrong = [c for c in codes if not pattern.fullmatch(c)]
    if wrong:
        problems[field] = f"These are not {what}: {', '.join(wrong[:5])}."
    return tuple(sorted(set(codes)))


def _date(value: str | None) -> dt.date | None:
    value = (value or "").strip()
    if not DATE.fullmatch(value):
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        return None


def _expiry(value: str | None, today: dt.date, problems: dict[str, str]) -> str:
    day = _date(value)
    if day is None:
        problems["expires"] = "Give the last day of access as a date (YYYY-MM-DD)."
        return ""
    if day < today:
        problems["expires"] = f"The expiry date {day.isoformat()} has passed: give today or a later date."
    return day.isoformat()


def _training_date(value: str | None, today: dt.date, problems: dict[str, str]) -> str:
    day = _date(value)
    if day is None:
        problems["training_completed"] = "Give the date you completed the training (YYYY-MM-DD)."
        return ""
    if day > today:
        problems["training_completed"] = "The training date cannot be in the future."
    return day.isoformat()


def _ods(value: str | None, problems: dict[str, str]) -> str | None:
    value = (value or "").strip().upper()
    if not value:
        return None
    if not ODS_CODE.fullmatch(value):
        problems["organisation_ods"] = "An ODS code is 3 to 10 letters and digits (for example Y01001 or RX9)."
    return value


def _details(
    issuer: str,
    subject: str,
    roles: Iterable[str],
    activities: Iterable[str],
    expires: str,
    ods: str | None,
    *,
    action: str,
) -> dict:
    return {
        "action": action,
        "register-issuer": issuer,
        "register-subject": subject,
        "role-codes": " ".join(roles),
        "activity-codes": " ".join(activities),
        "expires": expires,
        "organisation": ods,
    }
