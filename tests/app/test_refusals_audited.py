"""Every refused request is in the audit trail — named, counted, never dropped — on every route of the app.

The routes come from the Flask url_map, so a new route is walked as soon as it exists: as a user without a
role, a standalone user without recorded training, a clinician on the privacy officer's and register
manager's pages, a browser presenting another user's launch context, and a request with no session at all.
Each refusing answer (400 from a form check, 401, 403) must add exactly one refusal to the trail (written,
or counted towards a summary), naming the user whose launch it was. Nothing here reaches a FHIR server:
every persona is refused before anything is fetched.
"""

from __future__ import annotations

import itertools
import time

import pytest

from app import create_app
from app.config import load_config
from app.record.catalogue import TABLE
from app.services import services
from launch.context import LaunchContext
from launch.identity import UserIdentity
from sandbox.serve import SANDBOX_CONFIG

NO_ROLE = UserIdentity(name="Dr Lee Locum", sub="locum-sub", fhir_user="Practitioner/locum", tried=("cis2_claims: x",))
CLINICIAN = UserIdentity(
    name="Dr Una Trained", sub="una-sub", sds_user_id="555000000777", role_codes=("R8000",), activity_codes=("B0360",)
)
OWNER = UserIdentity(
    name="Dr Owen Owner", sub="owner-sub", sds_user_id="555000000778", role_codes=("R8000",), activity_codes=("B0360",)
)
# Answers a refused persona may get that are not refusals: redirects, "not found", the access-request form.
NOT_REFUSALS = {302, 303, 404, 405}
REQUEST_FORM = {"register.request_form", "register.request_sent"}
MANAGER_PAGES = ("privacy.", "register.")


@pytest.fixture
def app(tmp_path):
    env = {
        "SCR_KEYS_FILE": str(tmp_path / "keys.json"),
        "SCR_AUDIT_SQLITE": str(tmp_path / "audit.sqlite3"),
        "SCR_SYNTHEA_DIR": str(tmp_path / "none"),
    }
    application = create_app(load_config(SANDBOX_CONFIG, env=env))
    yield application
    services(application).audit_store.engine.dispose()


def launch_context(app, identity: UserIdentity, *, standalone: bool = False) -> LaunchContext:
    iss = services(app).config.ehrs[0].issuer
    ctx = LaunchContext(
        id=f"ctx-{identity.sub}-{'sa' if standalone else 'ehr'}",
        iss=iss,
        ehr_name="Riverside EHR",
        patient="",
        scope="",
        standalone=standalone,
        user_claims={},
        identity=UserIdentity.from_dict({**identity.__dict__, "issuer": iss, "organisation": None}),
    )
    services(app).launch.contexts.save(ctx)
    return ctx


def browser(app, *contexts: LaunchContext):
    client = app.test_client()
    if contexts:
        with client.session_transaction() as session:
            session["contexts"] = [c.id for c in contexts]
    return client


def refusals(app) -> list:
    return [
        e
        for e in services(app).audit_store.search(limit=100_000)
        if e.index["action_code"] in ("refusal", "refusal-summary")
    ]


def detail(event, name: str) -> str | None:
    for entity in event.event.get("entity", []):
        for d in entity.get("detail", []):
            if d["type"] == name:
                return d["valueString"]
    return None


def counted(app) -> int:
    """Refusals in the trail (a summary or an address-minute event counts its count) plus those still counting."""
    total = sum(int(detail(e, "count") or 1) for e in refusals(app))
    return total + services(app).audit.refusals.pending()


def ctx_routes(app):
    """Every rule addressed by a launch context, with a URL and the method to try (GET if it has one)."""
    catalogue = services(app).catalogue
    table = next(s.name for s in catalogue.pages if s.page == TABLE)
    values = {"name": table, "slug": "x", "row_id": "x", "alert_id": 1, "entry_id": 1, "number": 1}
    for rule in app.url_map.iter_rules():
        if "ctx_id" not in rule.arguments:
            continue
        method = "GET" if "GET" in rule.methods else "POST"
        yield rule, method, {k: values[k] for k in rule.arguments if k != "ctx_id"}


def url(app, rule, ctx_id: str, args: dict) -> str:
    with app.test_request_context():
        from flask import url_for

        return url_for(rule.endpoint, ctx_id=ctx_id, **args)


def test_every_route_refusing_every_refused_user_is_audited_with_the_user(app):
    no_role = launch_context(app, NO_ROLE)
    untrained = launch_context(app, CLINICIAN, standalone=True)
    clinician = launch_context(app, CLINICIAN)
    owners = launch_context(app, OWNER)
    intruder = browser(app, no_role)  # signed in as somebody else, presenting the owner's launch
    personas = [
        ("no role", browser(app, no_role), no_role, NO_ROLE, None),
        ("standalone untrained", browser(app, untrained), untrained, CLINICIAN, None),
        ("not a privacy officer", browser(app, clinician), clinician, CLINICIAN, MANAGER_PAGES),
        ("another user's context", intruder, owners, OWNER, None),
        ("no session", app.test_client(), owners, OWNER, None),
    ]
    walked, refused_seen = 0, set()
    for (label, client, ctx, user, only), (rule, method, args) in itertools.product(personas, list(ctx_routes(app))):
        if only and not rule.endpoint.startswith(only):
            continue  # a clinician's record pages would be fetched: they are not refused
        path = url(app, rule, ctx.id, args)
        for attempt in (1, 2):  # the second is identical: counted, not dropped
            before = counted(app)
            resp = client.open(path, method=method, data={} if method == "POST" else None)
            walked += 1
            after = counted(app)
            where = f"{label}: {method} {path} (attempt {attempt}) answered {resp.status_code}"
            if resp.status_code in (400, 401, 403) or rule.endpoint == "record.progress":
                assert after - before == 1, f"{where}: {after - before} refusal(s) recorded"
                refused_seen.add((label, rule.endpoint))
            else:
                assert resp.status_code in NOT_REFUSALS or (
                    rule.endpoint in REQUEST_FORM and user is not OWNER and resp.status_code == 200
                ), f"{where}: not a refusal, yet not a redirect either"
                assert after - before in (0, 1), where
    assert walked > 50 and len(refused_seen) > 30

    services(app).audit.refusals.flush(force=True)
    assert services(app).audit.refusals.pending() == 0
    events = refusals(app)
    anonymous = [e for e in events if not e.index["user_id"]]
    assert anonymous == [], "every refused request here named a known launch: each event names its user"
    for label, endpoint in refused_seen:
        user = {p[0]: p[3] for p in personas}[label]
        assert any(e.index["user_id"] == user.user_id for e in events), f"{label} {endpoint}: user not named"
    strangers = [e for e in events if detail(e, "session")]
    assert {detail(e, "session") for e in strangers} == {
        "not this browser's session",
        "no session (context id presented)",
    }
    assert all(e.index["user_id"] == OWNER.user_id for e in strangers)
    summaries = [e for e in events if e.index["action_code"] == "refusal-summary"]
    assert summaries and all(int(detail(e, "count")) >= 1 for e in summaries)
    assert services(app).audit_store.verify().ok


def test_identical_refusals_are_counted_and_summarised_when_the_window_closes(app):
    ledger = services(app).audit.refusals
    now = [time.time()]
    ledger.clock = lambda: now[0]
    ctx = launch_context(app, NO_ROLE)
    client = browser(app, ctx)
    for _ in range(7):
        assert client.get(f"/r/{ctx.id}/").status_code == 403
    first = [e for e in refusals(app) if e.index["user_id"] == NO_ROLE.user_id]
    assert len(first) == 1 and ledger.pending() == 6  # one event now, six counted, none dropped
    assert ledger.flush() == 0  # the window is still open
    now[0] += ledger.window + 61
    assert ledger.flush() == 1
    summary = [e for e in refusals(app) if e.index["action_code"] == "refusal-summary"]
    assert len(summary) == 1 and detail(summary[0], "count") == "6"
    assert detail(summary[0], "first-event") == f"audit-{first[0].seq}"
    assert summary[0].index["user_id"] == NO_ROLE.user_id and ledger.pending() == 0
    # A new window starts with a full event again; its repeat is summarised by the next refusal after it.
    client.get(f"/r/{ctx.id}/")
    client.get(f"/r/{ctx.id}/")
    now[0] += ledger.window + 1
    client.get(f"/r/{ctx.id}/")
    kinds = [e.index["action_code"] for e in reversed(refusals(app))]
    assert kinds == ["refusal", "refusal-summary", "refusal", "refusal-summary", "refusal"]


def test_requests_without_a_session_are_one_event_per_address_and_minute(app):
    ledger = services(app).audit.refusals
    store = services(app).audit_store
    start = store.count()
    client = app.test_client()
    for i in range(25):
        assert client.get(f"/r/unknown-{i}/").status_code == 401
    for i in range(5):
        client.get(f"/r/unknown-{i}/", environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert store.count() == start and ledger.pending() == 30  # counted, not one row each
    assert ledger.flush(force=True) == 2
    events = refusals(app)
    by_address = {detail(e, "client-address"): int(detail(e, "count")) for e in events}
    assert by_address == {"127.0.0.1": 25, "192.0.2.7": 5}
    assert all(detail(e, "session") == "no session" for e in events)


def test_a_csrf_failure_is_a_refusal_of_the_user(app):
    officer = UserIdentity(
        name="Ms Pat Officer",
        sub="po-sub",
        sds_user_id="555000000007",
        role_codes=("R0001",),
        activity_codes=("B0015",),
    )
    ctx = launch_context(app, officer)
    client = browser(app, ctx)
    resp = client.post(f"/r/{ctx.id}/privacy/training", data={"csrf": "forged", "sds_user_id": "1234567"})
    assert resp.status_code == 400
    [event] = refusals(app)
    assert event.index["user_id"] == officer.user_id and "CSRF" in event.event["outcomeDesc"]


def test_break_glass_start_and_end_are_both_recorded(app):
    from types import SimpleNamespace

    running = services(app)
    rules = running.access.rules
    medic = UserIdentity(
        name="Dr Em Ergency",
        sub="em-sub",
        sds_user_id="555000000779",
        role_codes=("R8000",),
        activity_codes=("B0360", *sorted(rules.emergency_access)),
    )
    ctx = launch_context(app, medic)
    gathering = SimpleNamespace(nhs_number="9000000009", patient_name="Test Patient")
    with app.test_request_context():
        until = running.access.start_break_glass(
            ctx, gathering, "Patient unconscious in resus, allergies unknown, needs treatment now", "req-bg-1"
        )
    assert running.access.break_glass_until(ctx, "9000000009") == until

    def kinds():
        return [e.index["action_code"] for e in reversed(running.audit_store.search(limit=100))]

    assert kinds()[-1] == "break-glass"
    episodes = running.audit.break_glass
    real = episodes.clock
    episodes.clock = lambda: until + 120  # two minutes after it expired; noticed at the next request
    try:
        app.extensions["scr.audit.housekeeping"]._last = 0.0
        app.test_client().get("/help")
    finally:
        episodes.clock = real
    [end] = [e for e in running.audit_store.search(limit=100) if e.index["action_code"] == "break-glass-end"]
    assert end.index["user_id"] == medic.user_id and end.index["patient_nhs"] == "9000000009"
    assert detail(end, "ended-at") == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(until))  # the actual end
    assert detail(end, "ended-by") == "expired"
    assert end.event["subtype"][0]["code"] == "110138"
    assert episodes.close_expired() == 0  # recorded once

    # Ended before it expires: the access is removed and the end recorded at that moment.
    with app.test_request_context():
        running.access.start_break_glass(
            ctx, gathering, "Patient deteriorating again in resus, history needed urgently now", "req-bg-2"
        )
    assert episodes.end(ctx.identity, ctx.id, "9000000009", "req-bg-3", how="ended at sign-out")
    assert running.access.break_glass_until(ctx, "9000000009") is None
    assert kinds()[-2:] == ["break-glass", "break-glass-end"]


def test_a_break_glass_attempt_that_fails_validation_is_a_refusal(app, monkeypatch):
    from types import SimpleNamespace

    from app.access.policy import Step, Verdict
    from app.pipeline import Look
    from app.views import access as access_views

    medic = UserIdentity(
        name="Dr Em Ergency",
        sub="em2-sub",
        sds_user_id="555000000780",
        role_codes=("R8000",),
        activity_codes=("B0168",),
    )
    ctx = launch_context(app, medic)
    record = SimpleNamespace(nhs_number="9000000009", patient=None, results=[], complete=True)
    decision = SimpleNamespace(can_break_glass=True, sections=(), purpose=None)
    look = Look(Verdict(Step.BREAK_GLASS), decision, record, gathering=SimpleNamespace(nhs_number="9000000009"))
    monkeypatch.setattr(access_views, "_look", lambda _ctx: look)
    client = browser(app, ctx)
    with client.session_transaction() as session:
        session["csrf"] = "token"
    for form in ({"csrf": "token"}, {"csrf": "token", "confirm": "yes", "justification": "because"}):
        before = counted(app)
        assert client.post(f"/r/{ctx.id}/access/break-glass", data=form).status_code == 400
        assert counted(app) == before + 1
    [first] = refusals(app)
    assert first.index["user_id"] == medic.user_id and "break-glass refused" in first.event["outcomeDesc"]


def test_a_count_survives_a_trail_that_cannot_be_written(app, monkeypatch):
    from app.audit.store import AuditUnavailable

    ledger = services(app).audit.refusals
    ctx = launch_context(app, NO_ROLE)
    client = browser(app, ctx)
    for _ in range(4):
        client.get(f"/r/{ctx.id}/")
    assert ledger.pending() == 3
    real = ledger.write

    def down(*args, **kwargs):
        raise AuditUnavailable("database down")

    monkeypatch.setattr(ledger, "write", down)
    with pytest.raises(AuditUnavailable):
        ledger.flush(force=True)
    assert ledger.pending() == 3  # still counted
    monkeypatch.setattr(ledger, "write", real)
    assert ledger.flush(force=True) == 1 and ledger.pending() == 0
    [summary] = [e for e in refusals(app) if e.index["action_code"] == "refusal-summary"]
    assert detail(summary, "count") == "3"
