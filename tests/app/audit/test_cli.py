"""`flask audit verify` on a real app and database: intact, then tampered."""

from __future__ import annotations

from app import create_app
from app.audit.events import audit_event
from app.config import load_config
from app.services import services
from launch.identity import UserIdentity
from sandbox.serve import SANDBOX_CONFIG


def test_verify_reports_the_first_broken_link(tmp_path):
    env = {
        "SCR_KEYS_FILE": str(tmp_path / "keys.json"),
        "SCR_AUDIT_SQLITE": str(tmp_path / "audit.sqlite3"),
        "SCR_SYNTHEA_DIR": str(tmp_path / "none"),
    }
    app = create_app(load_config(SANDBOX_CONFIG, env=env))
    store = services(app).audit_store
    for i in range(4):
        store.append(
            audit_event("view", user=UserIdentity(name="x"), client_id="c", observer="o", request_id=f"r{i}"),
            patient_nhs=None,
            user_id="u",
            org_ods=None,
            purpose="TREAT",
            action_code="view",
            outcome="0",
        )
    runner = app.test_cli_runner()
    ok = runner.invoke(args=["audit", "verify"])
    assert ok.exit_code == 0 and "4 events verified" in ok.output
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER audit_no_update")
        conn.exec_driver_sql(
            "UPDATE audit_events SET purpose = 'BTG', event_json = replace(event_json, 'TREAT', 'BTG') WHERE seq = 2"
        )
    broken = runner.invoke(args=["audit", "verify"])
    assert broken.exit_code == 1
    assert "BROKEN at event 2" in broken.output and "altered" in broken.output


def test_outbox_counts_and_retries_dead_rows(tmp_path):
    from app.audit.alerts import Alert, AlertBox
    from app.audit.outbox import AlertOutbox

    from .webhook import free_port

    env = {
        "SCR_KEYS_FILE": str(tmp_path / "keys.json"),
        "SCR_AUDIT_SQLITE": str(tmp_path / "audit.sqlite3"),
        "SCR_SYNTHEA_DIR": str(tmp_path / "none"),
    }
    app = create_app(load_config(SANDBOX_CONFIG, env=env))
    store = services(app).audit_store
    down = AlertOutbox(store, [f"http://127.0.0.1:{free_port()}/inbox"], max_attempts=1, background=False)
    AlertBox(store, down).raise_alert(
        Alert(None, "2025-01-01T00:00:00Z", "reason", "privacy-officer", None, "Dr X", "Org", "viewed")
    )
    assert down.drain_once() == 1  # nothing listens: dead after its one attempt
    runner = app.test_cli_runner()
    shown = runner.invoke(args=["audit", "outbox", "--show", "dead"])
    assert shown.exit_code == 0, shown.output
    assert "dead       1" in shown.output and "ConnectionError" in shown.output
    retried = runner.invoke(args=["audit", "outbox", "--retry-dead"])
    assert retried.exit_code == 0 and "1 dead row(s) back to pending" in retried.output
    assert "pending    1" in retried.output and "dead       0" in retried.output
