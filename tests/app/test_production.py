"""Production mode for real: two gunicorn viewer instances sharing Redis and PostgreSQL, a sandbox of
their own, and a Redis that goes away and comes back. Required in CI (CI=true); skipped elsewhere when
PostgreSQL or Redis is not running."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
import requests
from sqlalchemy import create_engine, text

from tests.app.audit.conftest import PG_ADMIN_URL
from tests.conftest import IN_CI, ROOT, SYNTHEA_DIR, LoopbackCookieJar
from tests.installed import free_port, stop, wait_for

REDIS_URL = os.environ.get("SCR_TEST_REDIS_URL", "redis://127.0.0.1:6379/7")
GUNICORN = ROOT / ".venv" / "bin" / "gunicorn"
MARGARET = "9991000372"


def _services_or_skip() -> None:
    problems = []
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        problems.append(f"Redis at {REDIS_URL}: {exc}")
    try:
        with create_engine(PG_ADMIN_URL).connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001
        problems.append(f"PostgreSQL at {PG_ADMIN_URL}: {exc.__class__.__name__}")
    if problems:
        if IN_CI:
            pytest.fail("CI=true but production services are missing: " + "; ".join(problems))
        pytest.skip("production services not running here: " + "; ".join(problems))


@pytest.fixture
def pg_url():
    _services_or_skip()
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"scr_prod_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def delete_prefix(url: str, prefix: str) -> int:
    """Delete the keys under ``prefix`` (SCAN, then DELETE in batches) and nothing else; returns how many."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    deleted = 0
    try:
        batch = []
        for key in client.scan_iter(match=f"{prefix}*", count=500):
            batch.append(key)
            if len(batch) == 500:
                deleted += client.delete(*batch)
                batch = []
        if batch:
            deleted += client.delete(*batch)
    finally:
        client.close()
    return deleted


@pytest.fixture
def redis_prefix():
    """Keys of this test's own on the shared Redis: the viewers write under a unique prefix
    (SCR_REDIS_PREFIX) and only keys under it are deleted afterwards. Never FLUSHDB: the database is shared."""
    _services_or_skip()
    prefix = f"scr-test-{uuid.uuid4().hex[:12]}:"
    try:
        yield prefix
    finally:
        delete_prefix(REDIS_URL, prefix)


@pytest.fixture
def deployment(tmp_path, pg_url, redis_prefix):
    """A sandbox process and two gunicorn viewer instances (A is the public URL, as behind a load balancer)."""
    ports = {"sandbox": free_port(), "a": free_port(), "b": free_port()}
    env = {
        **os.environ,
        "SCR_CONFIG": str(ROOT / "sandbox" / "config.toml"),
        "SANDBOX_URL": f"http://127.0.0.1:{ports['sandbox']}",
        "VIEWER_URL": f"http://127.0.0.1:{ports['a']}",
        "SCR_KEYS_FILE": str(tmp_path / "keys.json"),
        "SCR_AUDIT_SQLITE": str(tmp_path / "unused.sqlite3"),
        "SCR_SYNTHEA_DIR": str(SYNTHEA_DIR),
        "SCR_DATABASE_URL": pg_url,
        "REDIS_URL": REDIS_URL,
        "SCR_REDIS_PREFIX": redis_prefix,
        "SCR_SECRET_KEY": "shared-secret-for-both-instances",
        "WEB_CONCURRENCY": "2",
        "GUNICORN_THREADS": "8",
    }
    procs = []
    logs = []
    try:
        sandbox = subprocess.Popen(
            [sys.executable, "-m", "sandbox.serve", "--only", "sandbox"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(sandbox)
        wait_for(f"{env['SANDBOX_URL']}/fhir/gp/metadata", sandbox)
        for name in ("a", "b"):
            log = open(tmp_path / f"viewer-{name}.log", "w")  # noqa: SIM115 - closed below
            logs.append(log)
            proc = subprocess.Popen(
                [
                    str(GUNICORN),
                    "--config",
                    "gunicorn.conf.py",
                    "--bind",
                    f"127.0.0.1:{ports[name]}",
                    "app:create_app()",
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            procs.append(proc)
            wait_for(f"http://127.0.0.1:{ports[name]}/healthz", proc)
        yield {"env": env, "ports": ports, "procs": procs, "log_dir": tmp_path, "prefix": redis_prefix}
    finally:
        for proc in reversed(procs):
            stop(proc)
        for log in logs:
            log.close()


def browser() -> requests.Session:
    s = requests.Session()
    s.cookies = LoopbackCookieJar()
    return s


def on(url: str, port: int) -> str:
    return re.sub(r"127\.0\.0\.1:\d+", f"127.0.0.1:{port}", url, count=1)


def launch_across(deployment, user="dr-patel", nhs=MARGARET) -> tuple[requests.Session, str]:
    """Start on instance A; the load balancer sends the callback and every page after it to instance B."""
    env, ports = deployment["env"], deployment["ports"]
    http = browser()
    to_viewer = http.get(
        f"{env['SANDBOX_URL']}/ehr/launch", params={"user": user, "patient": nhs}, allow_redirects=False
    )
    to_authorize = http.get(to_viewer.headers["Location"], allow_redirects=False)  # /launch on A
    assert to_authorize.headers["Location"].startswith(env["SANDBOX_URL"])
    to_callback = http.get(to_authorize.headers["Location"], allow_redirects=False)
    callback = to_callback.headers["Location"]
    assert callback.startswith(env["VIEWER_URL"] + "/callback")
    landed = http.get(on(callback, ports["b"]))  # callback and record pages on B
    assert landed.status_code == 200, landed.text[-2000:]
    assert landed.url.startswith(f"http://127.0.0.1:{ports['b']}/r/")
    return http, re.search(r"/r/([^/]+)/", landed.url).group(1)


def test_two_instances_share_sessions_tokens_records_and_audit(deployment, pg_url):
    ports = deployment["ports"]
    http, ctx = launch_across(deployment)
    page_b = http.get(f"http://127.0.0.1:{ports['b']}/r/{ctx}/")
    assert "Allergy to penicillin" in page_b.text
    page_a = http.get(f"http://127.0.0.1:{ports['a']}/r/{ctx}/medications")  # the other node, same launch
    assert page_a.status_code == 200 and "Apixaban" in page_a.text

    # A refresh on one instance is seen by the other.
    r = redis.Redis.from_url(REDIS_URL)
    key = f"{deployment['prefix']}tok:{ctx}"
    import json

    assert r.exists(key), f"no {key} in Redis: the viewer must write its keys under SCR_REDIS_PREFIX"
    tokens = json.loads(r.get(key))
    before = tokens["access_token"]
    tokens["expires_at"] = time.time() + 5
    r.set(key, json.dumps(tokens), ex=3600)
    assert http.get(f"http://127.0.0.1:{ports['a']}/r/{ctx}/", params={"refresh": "1"}).status_code == 200
    after = json.loads(r.get(key))["access_token"]
    assert after != before
    assert http.get(f"http://127.0.0.1:{ports['b']}/r/{ctx}/", params={"refresh": "1"}).status_code == 200
    assert json.loads(r.get(key))["access_token"] == after, "B refreshed again instead of using A's token"

    # The audit trail is in PostgreSQL, one chain for both instances.
    engine = create_engine(pg_url)
    with engine.connect() as conn:
        kinds = [row[0] for row in conn.execute(text("SELECT action_code FROM audit_events ORDER BY seq"))]
    engine.dispose()
    assert {"launch", "access-decision", "view"} <= set(kinds)
    from app.audit.store import AuditStore

    verified = AuditStore(pg_url).verify()
    assert verified.ok and verified.checked == len(kinds)

    # Both instances are ready, with Redis and the audit store reachable.
    for name in ("a", "b"):
        ready = requests.get(f"http://127.0.0.1:{ports[name]}/readyz", timeout=5).json()
        assert ready["checks"] == {"config": True, "audit_store": True, "redis": True}
    lines = (deployment["log_dir"] / "viewer-b.log").read_text().splitlines()
    fetch_logs = [line for line in lines if '"logger": "core.fhir_client"' in line]
    assert fetch_logs and all('"request_id"' in line for line in fetch_logs), "structured logs with request id"

    # Graceful shutdown: SIGTERM lets the instance finish and exit cleanly, well inside the grace period.
    instance_b = deployment["procs"][2]
    started = time.monotonic()
    instance_b.send_signal(signal.SIGTERM)
    assert instance_b.wait(timeout=25) == 0
    assert time.monotonic() - started < 25


@contextmanager
def private_redis(port: int):
    server = shutil.which("redis-server")
    if not server:
        if IN_CI:
            pytest.fail("CI=true but redis-server is not installed")
        pytest.skip("redis-server not installed")
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    try:
        yield proc
    finally:
        stop(proc)


def test_redis_down_is_a_clear_error_and_recovers(tmp_path, pg_url):
    _services_or_skip()
    port, sandbox_port, viewer_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "SCR_CONFIG": str(ROOT / "sandbox" / "config.toml"),
        "SANDBOX_URL": f"http://127.0.0.1:{sandbox_port}",
        "VIEWER_URL": f"http://127.0.0.1:{viewer_port}",
        "SCR_KEYS_FILE": str(tmp_path / "keys.json"),
        "SCR_SYNTHEA_DIR": str(SYNTHEA_DIR),
        "SCR_DATABASE_URL": pg_url,
        "REDIS_URL": f"redis://127.0.0.1:{port}/0",
        "SCR_SECRET_KEY": "x",
        "WEB_CONCURRENCY": "1",
    }
    procs = []
    try:
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "sandbox.serve", "--only", "sandbox"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_for(f"{env['SANDBOX_URL']}/fhir/gp/metadata", procs[0])
        with private_redis(port) as redis_proc:
            viewer = subprocess.Popen(
                [
                    str(GUNICORN),
                    "--config",
                    "gunicorn.conf.py",
                    "--bind",
                    f"127.0.0.1:{viewer_port}",
                    "app:create_app()",
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            procs.append(viewer)
            wait_for(f"{env['VIEWER_URL']}/healthz", viewer)
            http = browser()
            first = http.get(f"{env['SANDBOX_URL']}/ehr/launch", params={"user": "dr-patel", "patient": MARGARET})
            assert first.status_code == 200 and "Allergy to penicillin" in first.text
            engine = create_engine(pg_url)
            with engine.connect() as conn:
                events_before = conn.execute(text("SELECT COUNT(*) FROM audit_events")).scalar_one()
            stop(redis_proc)

            down = http.get(first.url)
            assert down.status_code == 503
            assert "temporarily unavailable" in down.text and "Nothing has been lost" in down.text
            assert "Traceback" not in down.text
            ready = requests.get(f"{env['VIEWER_URL']}/readyz", timeout=10)
            assert ready.status_code == 503 and ready.json()["checks"]["redis"] is False

        with private_redis(port):  # back (empty: sessions were in memory only), so the user launches again
            again = browser().get(f"{env['SANDBOX_URL']}/ehr/launch", params={"user": "dr-patel", "patient": MARGARET})
            assert again.status_code == 200 and "Allergy to penicillin" in again.text
            assert requests.get(f"{env['VIEWER_URL']}/readyz", timeout=10).status_code == 200
        with engine.connect() as conn:
            events_after = conn.execute(text("SELECT COUNT(*) FROM audit_events")).scalar_one()
        engine.dispose()
        assert events_after > events_before  # nothing written before the outage was lost
        from app.audit.store import AuditStore

        assert AuditStore(pg_url).verify().ok
    finally:
        for proc in reversed(procs):
            stop(proc)


def test_gunicorn_config_is_used_by_the_procfile():
    assert "gunicorn.conf.py" in (ROOT / "Procfile").read_text()
    config = (ROOT / "gunicorn.conf.py").read_text()
    assert 'worker_class = "gthread"' in config and "preload_app = False" in config
    assert Path(GUNICORN).exists()


def test_cleanup_deletes_only_the_keys_under_the_tests_prefix(redis_prefix):
    r = redis.Redis.from_url(REDIS_URL)
    neighbour = f"scr-test-{uuid.uuid4().hex[:12]}:"  # e.g. another test run, or a developer's data
    try:
        r.set(f"{neighbour}tok:1", "theirs", ex=300)
        for i in range(1200):  # more than one SCAN page and one DELETE batch
            r.set(f"{redis_prefix}k:{i}", "ours", ex=300)
        assert delete_prefix(REDIS_URL, redis_prefix) == 1200
        assert not list(r.scan_iter(match=f"{redis_prefix}*"))
        assert r.get(f"{neighbour}tok:1") == b"theirs"
    finally:
        r.delete(f"{neighbour}tok:1")
