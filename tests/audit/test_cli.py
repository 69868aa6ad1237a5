"""`flask audit verify` on a real app and database: intact, then tampered."""

from __future__ import annotations

from app import create_app
from app.audit.events import audit_event
from app.config import DEFAULT_CONFIG, load_config


def test_verify_reports_the_first_broken_link(tmp_path):
    env = {
        "SCR_KEYS_FILE": str(tmp_path / "keys.json"),
        "SCR_AUDIT_SQLITE": str(tmp_path / "audit.sqlite3"),
        "SCR_SYNTHEA_DIR": str(tmp_path / "none"),
    }
    app = create_app(load_config(DEFAULT_CONFIG, env=env))
    store = app.extensions["audit_store"]
    for i in range(4):
        store.append(
            audit_event("view", user={"name": "x"}, client_id="c", observer="o", request_id=f"r{i}"),
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
