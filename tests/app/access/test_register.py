"""The local access register on a real audit database: lookup semantics, every change audited (read back from
the trail), a change refused when the audit trail cannot be written, and the request → approval path."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from app.access.policy import AccessRules
from app.access.register import (
    ACCESS_REQUEST,
    APPROVED,
    PENDING,
    REGISTER_CHANGE,
    REJECTED,
    AccessRegister,
    RegisterError,
    manages_register,
    operator,
    utc_today,
)
from app.access.training import TrainingRegister
from app.audit.store import AuditStore, AuditUnavailable
from app.audit.trail import AuditTrail
from app.schema import register_entries
from launch.identity import UserIdentity, resolve_identity
from launch.roles import REGISTER, IdentityPolicy, RoleGrant
from tests.app.audit.conftest import PG_ADMIN_URL, _drop, _pg_database

ISS = "https://ehr.example.nhs.uk/fhir"
OTHER_ISS = "https://other-ehr.example.nhs.uk/fhir"
TODAY = dt.date(2030, 1, 15)
OFFICER = UserIdentity(
    name="Ms Pat Officer", sds_user_id="555000000007", role_codes=("R0001",), activity_codes=("B0015",)
)


class Clock:
    def __init__(self, day: dt.date) -> None:
        self.day = day

    def __call__(self) -> dt.date:
        return self.day


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    """The viewer's database on SQLite, and on PostgreSQL when reachable (required in CI)."""
    url = f"sqlite:///{tmp_path / 'audit.sqlite3'}" if request.param == "sqlite" else _pg_database()
    if url is None:
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL} (required when CI=true)")
    s = AuditStore(url)
    s.create_schema()
    yield s
    s.engine.dispose()
    if request.param == "postgresql":
        _drop(url)


@pytest.fixture
def clock():
    return Clock(TODAY)


@pytest.fixture
def register(store, clock):
    return AccessRegister(store, AuditTrail(store, observer="test"), today=clock)


def add(register, subject="555000000099", expires="2030-01-31", issuer=ISS, **kw):
    return register.add(
        issuer,
        subject,
        kw.pop("roles", "R8000"),
        kw.pop("activities", "B0360 B0370"),
        expires,
        by=kw.pop("by", OFFICER),
        request_id=kw.pop("request_id", "req-1"),
        **kw,
    )


def events(store, kind):
    return [e for e in reversed(store.search(limit=1000)) if e.index["action_code"] == kind]


def detail(event, name):
    return next(
        (d["valueString"] for ent in event.event["entity"] for d in ent.get("detail", []) if d["type"] == name), None
    )


# -- lookup ------------------------------------------------------------------------------------------------------
def test_lookup_matches_any_of_the_users_subjects_at_that_issuer_only(register):
    add(register, subject="Practitioner/abc", activities="B0360", organisation_ods="y01001")
    grant = register.lookup(ISS, ("sub-1", "Practitioner/abc", "555000000001"))
    assert grant == RoleGrant(("R8000",), ("B0360",), REGISTER, grant.organisation, "2030-01-31")
    assert grant.organisation.ods == "Y01001"
    assert register.lookup(ISS + "/", ("Practitioner/abc",)) == grant  # the issuer as configured (no slash)
    assert register.lookup(OTHER_ISS, ("Practitioner/abc",)) is None
    assert register.lookup(ISS, ("sub-1", "555000000001")) is None
    assert register.lookup(ISS, ()) is None
    assert register.lookup("", ("Practitioner/abc",)) is None


def test_expiry_is_inclusive_of_the_date(register, clock):
    add(register, expires="2030-01-31")
    clock.day = dt.date(2030, 1, 31)
    assert register.lookup(ISS, ("555000000099",)).expires == "2030-01-31"
    assert register.entries()[0].state == "current"
    clock.day = dt.date(2030, 2, 1)
    assert register.lookup(ISS, ("555000000099",)) is None
    assert register.entries()[0].state == "expired"
    assert register.entries(include_inactive=False) == []


def test_today_is_the_utc_date():
    assert utc_today() == dt.datetime.now(dt.UTC).date()
    assert AccessRegister.__init__.__kwdefaults__["today"] is utc_today


def test_a_revoked_entry_gives_nothing_and_re_adding_reinstates_it(register):
    entry = add(register)
    revoked = register.revoke(entry.id, by=OFFICER, request_id="req-2", reason="left the practice")
    assert revoked.state == "revoked" and revoked.revoked_by == "Ms Pat Officer (555000000007)"
    assert register.lookup(ISS, ("555000000099",)) is None
    with pytest.raises(RegisterError, match="already revoked"):
        register.revoke(entry.id, by=OFFICER, request_id="req-3")
    with pytest.raises(RegisterError, match="add it again"):
        register.renew(entry.id, "2030-06-30", by=OFFICER, request_id="req-3")
    again = add(register, roles="R8001", activities="B0370")
    assert again.id == entry.id and again.state == "current" and again.revoked_at is None
    assert register.lookup(ISS, ("555000000099",)).role_codes == ("R8001",)


def test_of_two_current_entries_for_one_user_the_longest_lasting_wins(register):
    add(register, subject="sub-1", roles="R8001", activities="B0370", expires="2030-03-01")
    add(register, subject="Practitioner/abc", roles="R8000", activities="B0360", expires="2030-12-31")
    grant = register.lookup(ISS, ("sub-1", "Practitioner/abc"))
    assert (grant.role_codes, grant.activity_codes) == (("R8000",), ("B0360",))  # never mixed


def test_renew_sets_a_new_expiry(register, clock):
    entry = add(register)
    renewed = register.renew(entry.id, "2031-01-31", by=OFFICER, request_id="req-2")
    assert renewed.expires == "2031-01-31" and renewed.updated_by.startswith("Ms Pat Officer")
    clock.day = dt.date(2030, 6, 1)
    assert register.lookup(ISS, ("555000000099",)) is not None


def test_the_identity_source_register_resolves_a_user_from_the_register(register):
    add(register, subject="sub-7", roles="R8003", activities="B0370", organisation_ods="RX9")
    identity = resolve_identity(
        None,
        None,
        {"name": "Alex Therapist", "sub": "sub-7"},
        issuer=ISS,
        policy=IdentityPolicy(order=(REGISTER,)),
        register=register.lookup,
    )
    assert identity.role_source == REGISTER
    assert (identity.role_codes, identity.activity_codes, identity.ods) == (("R8003",), ("B0370",), "RX9")


# -- validation ------------------------------------------------------------------------------------------------------
def test_every_problem_is_reported_at_once_and_nothing_is_written(register, store):
    before = store.count()
    with pytest.raises(RegisterError) as caught:
        register.add(
            "not a url", "has space", "X1 R80", "B12", "2030-01-14", by=OFFICER, request_id="r", organisation_ods="??"
        )
    assert set(caught.value.problems) == {
        "issuer",
        "subject",
        "role_codes",
        "activity_codes",
        "expires",
        "organisation_ods",
    }
    assert "has passed" in caught.value.problems["expires"]
    with pytest.raises(RegisterError) as no_role:
        register.add(ISS, "u1", "", "B0360", "2030-02-30", by=OFFICER, request_id="r")
    assert set(no_role.value.problems) == {"role_codes", "expires"}
    assert store.count() == before and register.entries() == []


def test_codes_are_normalised(register):
    entry = add(register, roles="s0080:g0450:r5080, R8000", activities="b0370,B0360 b0370")
    assert entry.role_codes == ("R5080", "R8000") and entry.activity_codes == ("B0360", "B0370")


# -- audit ----------------------------------------------------------------------------------------------------------
def test_every_register_change_is_audited_with_who_made_it(register, store):
    entry = add(register, request_id="req-add")
    register.renew(entry.id, "2030-12-31", by=OFFICER, request_id="req-renew")
    register.revoke(entry.id, by=operator("alice"), request_id="req-revoke", reason="left")
    add(register, request_id="req-readd")
    trail = events(store, REGISTER_CHANGE)
    assert [detail(e, "action") for e in trail] == ["added", "renewed", "revoked", "reinstated"]
    assert [detail(e, "request-id") for e in trail] == ["req-add", "req-renew", "req-revoke", "req-readd"]
    added = trail[0]
    assert added.event["subtype"][-1]["code"] == REGISTER_CHANGE and added.event["type"]["code"] == "110136"
    assert added.index["user_id"] == "555000000007" and added.event["agent"][0]["who"]["display"] == "Ms Pat Officer"
    assert detail(added, "register-subject") == "555000000099" and detail(added, "register-issuer") == ISS
    assert detail(added, "role-codes") == "R8000" and detail(added, "activity-codes") == "B0360 B0370"
    assert detail(added, "expires") == "2030-01-31"
    assert detail(trail[1], "previous-expiry") == "2030-01-31" and detail(trail[1], "expires") == "2030-12-31"
    assert trail[2].index["user_id"] == "cli:alice" and "left" in trail[2].event["outcomeDesc"]
    assert store.verify().ok


def _break_the_audit_trail(store):
    with store.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE audit_events RENAME TO audit_events_away")


def test_when_the_audit_trail_cannot_be_written_nothing_changes(register, store):
    entry = add(register)
    pending = register.submit(
        UserIdentity(name="Dr New", sub="new-sub"),
        ISS,
        "EHR",
        requested_role="R8000",
        organisation="Riverside",
        organisation_ods=None,
        reason="I work the out of hours rota at Riverside",
        training_completed="2030-01-10",
        training_confirmed=True,
        request_id="r",
    )
    _break_the_audit_trail(store)
    with pytest.raises(AuditUnavailable):
        add(register, subject="someone-else")
    with pytest.raises(AuditUnavailable):
        register.renew(entry.id, "2031-01-01", by=OFFICER, request_id="r")
    with pytest.raises(AuditUnavailable):
        register.revoke(entry.id, by=OFFICER, request_id="r")
    with pytest.raises(AuditUnavailable):
        register.approve(pending.id, "R8000", "B0360", "2030-12-31", by=OFFICER, request_id="r")
    with pytest.raises(AuditUnavailable):
        register.reject(pending.id, by=OFFICER, request_id="r", note="not known at Riverside")
    with pytest.raises(AuditUnavailable):
        register.submit(
            UserIdentity(name="Dr Other", sub="other-sub"),
            ISS,
            "EHR",
            requested_role="R8000",
            organisation="Riverside",
            organisation_ods=None,
            reason="I work the out of hours rota at Riverside",
            training_completed="2030-01-10",
            training_confirmed=True,
            request_id="r",
        )
    assert [(e.subject, e.expires, e.state) for e in register.entries()] == [("555000000099", "2030-01-31", "current")]
    assert [r.id for r in register.requests()] == [pending.id]
    assert not TrainingRegister(store).attested("new-sub")


def test_a_change_that_fails_after_its_audit_is_followed_by_a_not_applied_event(register, store, monkeypatch):
    req = _submit(register)
    stale = register.get_request(req.id)
    register.reject(req.id, by=OFFICER, request_id="r1", note="duplicate")
    monkeypatch.setattr(register, "get_request", lambda number: stale)  # decided by someone else meanwhile
    with pytest.raises(RegisterError, match="at the same moment"):
        register.approve(req.id, "R8000", "B0360", "2030-12-31", by=OFFICER, request_id="r2")
    last = events(store, ACCESS_REQUEST)[-2:]
    assert detail(last[0], "action") == "approved"
    assert detail(last[1], "action") == "not-applied" and last[1].event["outcome"] == "4"
    assert detail(last[1], "audit-event") == str(last[0].seq)
    monkeypatch.undo()
    assert register.entries() == [] and register.get_request(req.id).status == REJECTED


# -- requests ------------------------------------------------------------------------------------------------------
def _submit(register, identity=None, **kw):
    fields = {
        "requested_role": "R8000",
        "organisation": "Riverside Medical Practice",
        "organisation_ods": "y01001",
        "reason": "Locum GP covering the practice for three months",
        "training_completed": "2030-01-10",
        "training_confirmed": True,
        **kw,
    }
    identity = identity or UserIdentity(name="Dr Lee Locum", sub="locum-sub", fhir_user="Practitioner/locum")
    return register.submit(identity, ISS, "Riverside EHR", request_id="req-submit", **fields)


def test_request_then_approval_writes_the_register_and_the_training_attestation(register, store):
    identity = UserIdentity(name="Dr Lee Locum", sub="locum-sub", fhir_user="Practitioner/locum")
    req = _submit(register, identity)
    assert req.status == PENDING and req.subject == identity.user_id == "locum-sub"
    assert req.subjects == ("locum-sub", "Practitioner/locum") and req.organisation_ods == "Y01001"
    assert register.lookup(ISS, identity.subjects) is None
    assert [r.id for r in register.requests()] == [req.id]
    assert register.pending_for(ISS, ["Practitioner/locum", "locum-sub"]).id == req.id
    assert register.pending_for(OTHER_ISS, identity.subjects) is None
    with pytest.raises(RegisterError, match="already asked"):
        _submit(register, identity)

    entry = register.approve(
        req.id, "R8000", "B0360 B0370", "2030-12-31", by=OFFICER, request_id="req-approve", note="checked with PM"
    )
    assert (entry.subject, entry.request_id, entry.organisation_ods) == ("locum-sub", req.id, "Y01001")
    grant = register.lookup(ISS, identity.subjects)
    assert grant.role_codes == ("R8000",) and grant.activity_codes == ("B0360", "B0370") and grant.source == REGISTER
    training = TrainingRegister(store)
    assert training.attested(identity.user_id)
    assert next(r for r in training.list() if r["sds_user_id"] == "locum-sub")["completed"] == "2030-01-10"
    decided = register.get_request(req.id)
    assert (
        decided.status == APPROVED
        and decided.decided_by.startswith("Ms Pat Officer")
        and decided.note == "checked with PM"
    )
    assert register.requests() == []
    with pytest.raises(RegisterError, match="already approved"):
        register.reject(req.id, by=OFFICER, request_id="r", note="x")

    trail = events(store, ACCESS_REQUEST)
    assert [detail(e, "action") for e in trail] == ["submitted", "approved"]
    assert trail[0].index["user_id"] == "locum-sub" and trail[1].index["user_id"] == "555000000007"
    assert trail[1].event["type"]["code"] == "110137" and detail(trail[1], "training-completed") == "2030-01-10"
    assert "Locum GP covering" in detail(trail[0], "justification")


def test_rejection_needs_a_note_and_writes_nothing_else(register, store):
    req = _submit(register)
    with pytest.raises(RegisterError) as caught:
        register.reject(req.id, by=OFFICER, request_id="r", note="  ")
    assert set(caught.value.problems) == {"note"}
    rejected = register.reject(req.id, by=OFFICER, request_id="r", note="Not known at Riverside")
    assert rejected.status == REJECTED and rejected.note == "Not known at Riverside"
    assert register.entries() == [] and not TrainingRegister(store).attested("locum-sub")
    assert detail(events(store, ACCESS_REQUEST)[-1], "action") == "rejected"
    assert _submit(register).status == PENDING  # may ask again once decided


def test_the_request_form_is_checked_field_by_field(register):
    with pytest.raises(RegisterError) as caught:
        _submit(
            register,
            requested_role="R0001",
            organisation=" ",
            organisation_ods="not an ods",
            reason="because",
            training_completed="2030-01-16",
            training_confirmed=False,
        )
    assert set(caught.value.problems) == {
        "requested_role",
        "organisation",
        "organisation_ods",
        "reason",
        "training_completed",
        "training_confirmed",
    }
    assert "future" in caught.value.problems["training_completed"]
    with pytest.raises(RegisterError, match="did not say who you are"):
        _submit(register, UserIdentity(name="Nobody"))
    assert register.requests() == []


def test_approval_checks_the_codes_and_the_expiry_first(register, store):
    req = _submit(register)
    before = store.count()
    with pytest.raises(RegisterError) as caught:
        register.approve(req.id, "", "X", "yesterday", by=OFFICER, request_id="r")
    assert set(caught.value.problems) == {"role_codes", "activity_codes", "expires"}
    assert store.count() == before and register.get_request(req.id).status == PENDING


def test_who_manages_the_register():
    rules = AccessRules.from_config(None)
    assert rules.register_manager_roles == frozenset({"R5080"}) and rules.register_default_days == 365
    assert manages_register(OFFICER, rules)  # a privacy officer, as the console decides
    assert manages_register(UserIdentity(name="RA", role_codes=("R5080",)), rules)
    assert not manages_register(UserIdentity(name="RA agent", role_codes=("R5090",)), rules)
    assert not manages_register(UserIdentity(name="Dr", role_codes=("R8000",), activity_codes=("B0360",)), rules)
    assert not manages_register(UserIdentity(name="PO without activity", role_codes=("R0001",)), rules)
    assert not manages_register(None, rules)
    wider = AccessRules.from_config({"register_manager_roles": ["R5080", "R5090"]})
    assert manages_register(UserIdentity(name="RA agent", role_codes=("R5090",)), wider)


def test_entries_are_stored_once_per_issuer_and_subject(register, store):
    add(register)
    add(register, roles="R8001")
    add(register, issuer=OTHER_ISS)
    with store.engine.connect() as conn:
        rows = conn.execute(select(register_entries.c.issuer, register_entries.c.role_codes)).all()
    assert sorted(rows) == [(ISS, "R8001"), (OTHER_ISS, "R8000")]
