"""Shared fixtures: the sandbox and the viewer running for real on loopback, on free ports."""

from __future__ import annotations

import copy
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from flask import Flask
from werkzeug.serving import make_server

from app import create_app
from app.config import Config, load_config
from sandbox import create_sandbox_app
from sandbox.serve import SANDBOX_CONFIG, NoDelayHandler
from sandbox.state import SandboxState

ROOT = Path(__file__).resolve().parent.parent
# The viewer has no default configuration file (production refuses to start without SCR_CONFIG); `pytest` run
# directly uses the sandbox's, as `make run` and `make test` do.
if not os.environ.get("SCR_CONFIG"):
    os.environ["SCR_CONFIG"] = str(SANDBOX_CONFIG)
SYNTHEA_DIR = Path(os.environ.get("SCR_SYNTHEA_DIR") or ROOT.parent / "shared" / "data" / "synthea")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@dataclass
class Running:
    config: Config
    sandbox_url: str
    viewer_url: str
    sandbox_app: Flask
    viewer_app: Flask

    @property
    def state(self) -> SandboxState:
        return self.sandbox_app.extensions["sandbox_state"]

    def fhir_base(self, org_id: str) -> str:
        return f"{self.sandbox_url}/fhir/{org_id}"


def _bind():
    placeholder = Flask("placeholder")
    return make_server("127.0.0.1", 0, placeholder, threaded=True, request_handler=NoDelayHandler)


def test_env(tmp_path: Path, sandbox_port: int, viewer_port: int) -> dict[str, str]:
    return {
        "SANDBOX_URL": f"http://127.0.0.1:{sandbox_port}",
        "VIEWER_URL": f"http://127.0.0.1:{viewer_port}",
        "SCR_KEYS_FILE": str(tmp_path / "viewer.jwks.json"),
        "SCR_SYNTHEA_DIR": str(SYNTHEA_DIR),
        "SCR_AUDIT_SQLITE": str(tmp_path / "audit.sqlite3"),
    }


@pytest.fixture(scope="session")
def running(tmp_path_factory) -> Running:
    """Both apps served by real threaded HTTP servers; URLs in config point at the bound ports."""
    sandbox_srv, viewer_srv = _bind(), _bind()
    env = test_env(tmp_path_factory.mktemp("keys"), sandbox_srv.server_port, viewer_srv.server_port)
    config = load_config(SANDBOX_CONFIG, env=env)
    viewer_app = create_app(config)
    sandbox_app = create_sandbox_app(config)
    sandbox_srv.app, viewer_srv.app = sandbox_app, viewer_app
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (sandbox_srv, viewer_srv)]
    for t in threads:
        t.start()
    yield Running(config, env["SANDBOX_URL"], env["VIEWER_URL"], sandbox_app, viewer_app)
    for s in (sandbox_srv, viewer_srv):
        s.shutdown()


@pytest.fixture
def sandbox(running: Running) -> Running:
    """The running sandbox, with faults and simulated errors reset after each test."""
    running.state.reset()
    yield running
    running.state.reset()


class LoopbackCookieJar(requests.cookies.RequestsCookieJar):
    """Send ``Secure`` cookies to 127.0.0.1 over http, as browsers do for loopback (pitfall C3).

    requests builds a fresh default-policy jar from the session's cookies for every request, so a
    cookie policy on the session is ignored; instead the jar hands out loopback cookies unmarked.
    """

    def __iter__(self):
        for cookie in super().__iter__():
            if cookie.secure and cookie.domain in ("127.0.0.1", "localhost", "localhost.local"):
                cookie = copy.copy(cookie)
                cookie.secure = False
            yield cookie


@pytest.fixture
def http() -> requests.Session:
    session = requests.Session()
    session.cookies = LoopbackCookieJar()
    yield session
    session.close()


def synthea_available() -> bool:
    return SYNTHEA_DIR.is_dir()


def chromium_path() -> str | None:
    return shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


# ---- the fast lane: `make test-fast` runs `pytest -m "not integration"` ----------------------------------

# Fixtures that start servers or processes, or need a service from outside the test process (PostgreSQL,
# Redis, Chromium, sekmet-fhir). ``item.fixturenames`` is the whole closure, so a fixture built on one of
# these (``sandbox`` on ``running``, ``page`` on ``playwright``) counts too.
INTEGRATION_FIXTURES = frozenset(
    {
        "running",  # the sandbox and the viewer on real loopback HTTP servers
        "walkthrough",  # the README's configuration with its own sandbox and viewer (tests/app/test_walkthrough.py)
        "sandbox",
        "sekmet",  # sekmet-fhir in its own venv (tests/interop)
        "deployment",  # gunicorn viewers + a sandbox process + Redis + PostgreSQL (tests/app/test_production.py)
        "pg_url",  # a fresh PostgreSQL database
        "redis_prefix",  # keys of their own on the shared Redis
        "playwright",  # Chromium through pytest-playwright (page, context, browser are built on it)
        "browser",
        "page",
    }
)
# Parameters that pick an external service, whatever they parametrize: tests/app/audit's ``store`` and
# ``fresh_url`` run on "sqlite" in the fast lane and on "postgresql" in the full suite.
INTEGRATION_PARAMS = frozenset({"postgresql", "redis"})
# Folders and modules that need servers or processes without saying so through a fixture.
INTEGRATION_PATHS = (
    "tests/e2e/",
    "tests/hostile/",
    "tests/interop/",
    "tests/sandbox/test_serve.py",
    "tests/test_packaging.py",
)


def is_integration(item: pytest.Item) -> bool:
    path = Path(str(item.fspath)).resolve()
    path = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.as_posix()
    if path.startswith(INTEGRATION_PATHS) or INTEGRATION_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return True
    params = getattr(getattr(item, "callspec", None), "params", {})
    return any(isinstance(value, str) and value in INTEGRATION_PARAMS for value in params.values())


def pytest_collection_modifyitems(config, items):
    """Mark every test that starts servers or needs external services as ``integration``."""
    for item in items:
        if is_integration(item) and item.get_closest_marker("integration") is None:
            item.add_marker(pytest.mark.integration)
