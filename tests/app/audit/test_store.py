"""Append-only, hash-chained, serialised: the audit store on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from app.audit.events import audit_event
from app.audit.store import AuditStore, AuditUnavailable, canonical, chain_hash
from launch.identity import Organisation, UserIdentity

USER = UserIdentity(
    name="Dr Anita Patel",
    sds_user_id="555000000001",
    role_codes=("R8000",),
    organisation=Organisation(ods="Y01001", name="Riverside Medical Practice"),
)


def append(store: AuditStore, n: int = 1, nhs: str = "9991000372", purpose: str = "TREAT"):
    out = []
    for i in range(n):
        event = audit_event(
            "view",
            user=USER,
            client_id="scr-viewer",
            observer="test",
            request_id=f"req-{i}",
            patient_nhs=nhs,
            purpose=purpose,
            what=f"summary {i}",
        )
        out.append(
            store.append(
                event,
                patient_nhs=nhs,
                user_id=USER.sds_user_id,
                org_ods="Y01001",
                purpose=purpose,
                action_code="view",
                outcome="0",
            )
        )
    return out


def test_events_chain_and_verify(store):
    stored = append(store, 5)
    assert [s.seq for s in stored] == [1, 2, 3, 4, 5]
    assert stored[1].prev_hash == stored[0].hash
    assert chain_hash(stored[0].hash, 2, stored[1].raw, stored[1].index) == stored[1].hash
    assert stored[1].raw == canonical({k: v for k, v in stored[1].event.items() if k != "id"})
    result = store.verify()
    assert result.ok and result.checked == 5


def test_search_filters(store):
    append(store, 3)
    append(store, 2, nhs="9991003339", purpose="ETREAT")
    assert len(store.search(patient_nhs="9991003339")) == 2
    assert len(store.search(purpose="TREAT")) == 3
    assert len(store.search(org_ods="Y01001")) == 5
    assert store.search(user_id="nobody") == []
    assert len(store.search(date_from="2000-01-01", date_to="2999-12-31")) == 5


def test_updates_and_deletes_are_refused_by_the_database(store):
    append(store, 2)
    for statement in (
        "UPDATE audit_events SET purpose = 'BTG' WHERE seq = 1",
        "DELETE FROM audit_events WHERE seq = 2",
    ):
        with pytest.raises(SQLAlchemyError), store.engine.begin() as conn:
            conn.execute(text(statement))
    assert store.verify().ok and store.count() == 2


def _without_guard(store: AuditStore, statement: str) -> None:
    """Tamper as an attacker with database access would: drop the guard, change a row."""
    with store.engine.begin() as conn:
        if store.is_sqlite:
            conn.exec_driver_sql("DROP TRIGGER audit_no_update")
            conn.exec_driver_sql("DROP TRIGGER IF EXISTS audit_no_delete")
        else:
            conn.exec_driver_sql("DROP TRIGGER audit_no_change ON audit_events")
        conn.exec_driver_sql(statement)


def test_tampering_with_one_row_is_detected(store):
    append(store, 6)
    _without_guard(
        store, "UPDATE audit_events SET event_json = replace(event_json, 'summary 2', 'nothing') WHERE seq = 3"
    )
    result = store.verify()
    assert not result.ok and result.first_broken == 3 and result.checked == 2
    assert "altered" in result.reason


def test_tampering_with_a_search_column_is_detected(store):
    append(store, 3)
    _without_guard(store, "UPDATE audit_events SET purpose = 'ETREAT' WHERE seq = 2")
    result = store.verify()
    assert not result.ok and result.first_broken == 2


def test_a_deleted_row_is_detected(store):
    append(store, 4)
    _without_guard(store, "DELETE FROM audit_events WHERE seq = 2")
    result = store.verify()
    assert not result.ok and result.first_broken == 2 and "gap" in result.reason


def test_concurrent_appends_make_one_chain_without_gaps_or_forks(store):
    errors = []

    def worker(k):
        try:
            append(store, 10, nhs="9991000372")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert store.count() == 200
    result = store.verify()
    assert result.ok and result.checked == 200
    with store.engine.connect() as conn:
        prevs = [r[0] for r in conn.execute(text("SELECT prev_hash FROM audit_events"))]
    assert len(set(prevs)) == 200  # no two events claim the same predecessor: no fork


def test_unreachable_store_raises_audit_unavailable(tmp_path):
    broken = AuditStore("sqlite:////proc/no-such-dir/audit.sqlite3")
    with pytest.raises(AuditUnavailable):
        append(broken)
    with pytest.raises(AuditUnavailable):
        broken.create_schema()
