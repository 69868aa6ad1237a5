"""Signed checkpoints of the chain head: a trail shortened from the end, or a forged checkpoint, is noticed."""

from __future__ import annotations

import json

import pytest

from app import create_app
from app.audit.checkpoints import Checkpoints, load_key, main
from app.config import load_config
from app.services import services
from launch.identity import UserIdentity
from sandbox.serve import SANDBOX_CONFIG


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


def write_events(app, n: int) -> None:
    trail = services(app).audit
    for i in range(n):
        trail.write("view", user=UserIdentity(name="Dr X", sub="x"), request_id=f"r{i}", purpose="TREAT")


def verify(app):
    return app.test_cli_runner().invoke(args=["audit", "verify"])


def test_checkpoints_are_signed_kept_outside_the_database_and_verify_passes(app, tmp_path):
    settings = services(app).config.audit
    assert settings.checkpoint_path == tmp_path / "audit.sqlite3.checkpoints.jsonl"
    assert settings.checkpoint_key_path == tmp_path / "keys" / "audit-checkpoint.jwks.json"
    assert settings.checkpoint_key_path.stat().st_mode & 0o077 == 0  # generated in development, private
    assert settings.checkpoint_key_path != services(app).config.viewer.keys_file  # a key of its own
    write_events(app, 250)
    lines = [json.loads(x) for x in settings.checkpoint_path.read_text().splitlines()]
    assert [c["seq"] for c in lines if c["seq"] % 100 == 0] == [100, 200]  # every N events
    assert lines[0]["seq"] == 1  # and the first append once M minutes have passed without one
    ok = verify(app)
    assert ok.exit_code == 0, ok.output
    assert "250 events verified" in ok.output and f"against {len(lines)} signed checkpoint(s)" in ok.output
    written = app.test_cli_runner().invoke(args=["audit", "checkpoint"])
    assert written.exit_code == 0 and "250 events" in written.output
    assert json.loads(settings.checkpoint_path.read_text().splitlines()[-1])["seq"] == 250


def test_deleting_the_newest_events_is_detected_naming_the_checkpoint(app):
    write_events(app, 205)
    store = services(app).audit_store
    assert store.verify().ok
    with store.engine.begin() as conn:  # an attacker with database access: triggers off, newest rows gone
        conn.exec_driver_sql("DROP TRIGGER audit_no_delete")
        conn.exec_driver_sql("DELETE FROM audit_events WHERE seq > 195")
    result = verify(app)
    assert result.exit_code == 1
    assert "shortened" in result.output and "checkpoint #" in result.output and "counts 200 events" in result.output
    assert "the chain holds 195" in result.output


def test_a_tampered_checkpoint_fails_verify(app):
    write_events(app, 120)
    path = services(app).config.audit.checkpoint_path
    lines = path.read_text().splitlines()
    forged = json.loads(lines[-1])
    header, payload, signature = forged["jws"].split(".")
    forged["jws"] = ".".join([header, payload, ("A" if signature[0] != "A" else "B") + signature[1:]])
    path.write_text("\n".join([*lines[:-1], json.dumps(forged)]) + "\n")
    result = verify(app)
    assert result.exit_code == 1
    assert f"checkpoint #{len(lines)}" in result.output and "signature does not verify" in result.output


def test_a_checkpoint_whose_fields_were_changed_fails_verify(app):
    write_events(app, 100)
    path = services(app).config.audit.checkpoint_path
    line = json.loads(path.read_text().splitlines()[-1])
    line["seq"] = 50  # pretend the chain was shorter, keeping the valid signature of the real one
    with path.open("a") as fh:
        fh.write(json.dumps(line) + "\n")
    result = verify(app)
    assert result.exit_code == 1 and "differ from what was signed" in result.output


def test_a_chain_rewritten_with_fresh_hashes_differs_from_its_checkpoint(app):
    from app.audit.store import GENESIS, chain_hash

    write_events(app, 100)
    store = services(app).audit_store
    events = list(store.iter_chain())
    with store.engine.begin() as conn:  # re-chain every row after changing one: the hashes all hold again
        conn.exec_driver_sql("DROP TRIGGER audit_no_update")
        prev = GENESIS
        for e in events:
            raw = e.raw.replace("TREAT", "HOPERAT") if e.seq == 10 else e.raw
            index = {**e.index, "purpose": "HOPERAT"} if e.seq == 10 else e.index
            digest = chain_hash(prev, e.seq, raw, index)
            conn.exec_driver_sql(
                "UPDATE audit_events SET event_json = ?, purpose = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                (raw, index["purpose"], prev, digest, e.seq),
            )
            prev = digest
    result = verify(app)
    assert result.exit_code == 1 and "rewritten" in result.output and "checkpoint #" in result.output


def test_without_a_key_no_checkpoint_is_written_and_verify_warns(tmp_path):
    marks = Checkpoints(tmp_path / "c.jsonl", None)
    marks.after_append(100, "0" * 64)
    assert not (tmp_path / "c.jsonl").exists() and not marks.enabled
    assert load_key(tmp_path / "missing.json") is None
    assert main([str(tmp_path / "k.json")]) == 0 and load_key(tmp_path / "k.json") is not None
    assert main([str(tmp_path / "k.json")]) == 1  # never overwrites


def test_time_based_checkpoints(tmp_path):
    main([str(tmp_path / "k.json")])
    now = [1_000_000.0]
    marks = Checkpoints(tmp_path / "c.jsonl", load_key(tmp_path / "k.json"), every_events=100, every_minutes=5,
                        clock=lambda: now[0])  # fmt: skip
    marks.after_append(1, "a" * 64)  # none yet: due at once
    marks.after_append(2, "b" * 64)
    now[0] += 301
    marks.after_append(3, "c" * 64)
    assert [c.seq for c in marks.read()] == [1, 3]
    now[0] += 301
    assert marks.if_stale((3, "c" * 64)) is None  # the head has not moved
    assert marks.if_stale((4, "d" * 64))["seq"] == 4


def test_breaking_the_glass_again_keeps_the_new_access_and_ends_the_old_episode():
    """A second break-glass by the same user for the same patient must not remove the access it just granted."""
    from app.audit.refusals import BreakGlassEpisodes
    from core.state.store import MemoryStore
    from launch.identity import UserIdentity

    store, written = MemoryStore(), []
    episodes = BreakGlassEpisodes(store, lambda kind, **kw: written.append((kind, kw)))
    user = UserIdentity("Dr A", sub="a", sds_user_id="555")
    for seq in (1, 2):
        store.set("break-glass:555:9991000747", {"until": 9e9}, ttl=60)  # what start_break_glass grants
        episodes.started(
            user=user,
            ctx_id="c",
            nhs="9991000747",
            until=9e9,
            started_seq=seq,
            access_key="break-glass:555:9991000747",
            request_id=f"r{seq}",
        )
    assert store.get("break-glass:555:9991000747") is not None
    assert [k for k, _ in written] == ["break-glass-end"]  # the first episode's end, recorded
    assert episodes.end(user, "c", "9991000747", "r3", how="ended at sign-out")
    assert store.get("break-glass:555:9991000747") is None  # ending it removes the access
