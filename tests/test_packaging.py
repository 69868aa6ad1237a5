"""The viewer runs on its own: the product wheel, installed in a fresh venv outside the repository, serves
the viewer from a folder of its own and completes a real EHR launch against the sandbox.

The wheel and the fresh venv (the wheel only, its dependencies from the repository's venv through a ``.pth``
file, no ``sandbox``) are made once per test session by ``tests/installed.py``, shared with the three
organisations test (``tests/interop/test_three_organisations.py``), which runs the same installed viewer.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, LoopbackCookieJar
from tests.installed import PRODUCT, clean_env, free_port, installed_python, product_wheel, start, stop, wait_for

MARGARET = "9991000372"  # Margaret, registered at Riverside Medical Practice (sandbox/fixtures/uk/gp.json)


def viewer_toml(viewer_port: int, sandbox_port: int, generate_dev_keys: bool) -> str:
    """A deployment's configuration, written as an operator would: literal URLs, no [sandbox] table."""
    fhir = f"http://127.0.0.1:{sandbox_port}/fhir"
    sources = "".join(
        f"""
[[source]]
id = "{org}"
name = "{name}"
ods_code = "{ods}"
kind = "{kind}"
base_url = "{fhir}/{org}"
auth = "backend_services"
client_id = "scr-viewer-backend"
scopes = "system/*.rs"
timeout = 5.0
"""
        for org, name, ods, kind in (
            ("gp", "Riverside Medical Practice", "Y01001", "gp"),
            ("hospital", "Northgate Hospitals NHS Foundation Trust", "RX9", "acute"),
            ("community", "Northgate Community and Mental Health NHS Trust", "RY8", "community_mental_health"),
            ("council", "Northgate City Council Social Care", "L90001", "social_care"),
        )
    )
    return f"""# The viewer alone: what a deployment writes (relative paths are relative to this file).
[viewer]
base_url = "http://127.0.0.1:{viewer_port}"
keys_file = "keys/viewer.jwks.json"
generate_dev_keys = {str(generate_dev_keys).lower()}
secret_key_env = "SCR_SECRET_KEY"
support_email = "servicedesk@example.nhs.uk"
support_phone = "0300 000 0000"

[[ehr]]
name = "Riverside Medical Practice clinical system"
issuer = "{fhir}/gp"
client_id = "scr-viewer"
client_auth = "private_key_jwt"
signing_alg = "RS384"
{sources}
[audit]
sqlite_path = "var/audit.sqlite3"
"""


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The product wheel, built from a copy of the source tree (once per session, see tests/installed.py)."""
    return product_wheel(tmp_path_factory)


@pytest.fixture(scope="session")
def venv(tmp_path_factory) -> Path:
    """The python of the fresh venv with the wheel installed (once per session, see tests/installed.py)."""
    return installed_python(tmp_path_factory)


def test_the_wheel_holds_the_viewer_files_and_not_the_sandbox(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "app/__main__.py",
        "app/alembic.ini",
        "app/templates/base.html",
        "app/static/css/app.css",
        "app/static/vendor/htmx/htmx.min.js",
        "app/migrations/env.py",
        "app/migrations/script.py.mako",
    ):
        assert required in names, required
    # Every template, static file and migration in the source tree, not just the few named above.
    for folder in ("app/templates", "app/static", "app/migrations"):
        files = {
            p.relative_to(ROOT).as_posix()
            for p in (ROOT / folder).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        }
        assert files and files <= names, sorted(files - names)
    assert not [n for n in names if n.startswith(("sandbox/", "tests/", "bench/"))]
    assert {top for top in (n.split("/")[0] for n in names) if not top.endswith(".dist-info")} == set(PRODUCT)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "scr-viewer = app.__main__:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_the_fresh_venv_has_the_installed_viewer_and_no_sandbox(venv, tmp_path):
    probe = (
        "import json, pathlib, sys, app, core, launch, flask\n"
        "print(app.__file__)\n"
        "print(json.dumps([str(pathlib.Path(p).resolve()) for p in sys.path]))\n"
        "try:\n"
        "    import sandbox\n"
        "except ModuleNotFoundError:\n"
        "    print('no sandbox')\n"
        "else:\n"
        "    print('sandbox at', sandbox.__file__)\n"
    )
    proc = subprocess.run(
        [str(venv), "-c", probe], cwd=tmp_path, capture_output=True, text=True, env=clean_env(), timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    app_file, path, sandbox_line = proc.stdout.splitlines()
    # The repository is on the path only as the dependencies' folder (its venv's site-packages), never its root.
    repo_entries = [p for p in json.loads(path) if Path(p).is_relative_to(ROOT)]
    assert repo_entries == [sysconfig.get_paths()["purelib"]], repo_entries
    assert Path(app_file).is_relative_to(venv.parent.parent), app_file  # the wheel's copy, not the repository's
    assert not Path(app_file).is_relative_to(ROOT)
    assert sandbox_line == "no sandbox"


def test_the_console_script_refuses_to_start_without_a_configuration(venv, tmp_path):
    proc = subprocess.run(
        [str(venv.parent / "scr-viewer")], cwd=tmp_path, capture_output=True, text=True, env=clean_env(), timeout=60
    )
    assert proc.returncode == 2
    assert "SCR_CONFIG" in proc.stderr and "docs/configuration.md" in proc.stderr and "--config" in proc.stderr


def test_the_installed_viewer_completes_an_ehr_launch_against_the_sandbox(venv, tmp_path):
    sandbox_port, viewer_port = free_port(), free_port()
    sandbox_url, viewer_url = f"http://127.0.0.1:{sandbox_port}", f"http://127.0.0.1:{viewer_port}"
    site = tmp_path / "viewer-site"  # the deployment's own folder: config, keys, audit database
    site.mkdir()
    config = site / "viewer.toml"
    config.write_text(viewer_toml(viewer_port, sandbox_port, generate_dev_keys=False))
    keys = site / "keys" / "viewer.jwks.json"
    keys.parent.mkdir()
    made = subprocess.run(
        [str(venv), "-m", "launch.keys", str(keys)], cwd=site, capture_output=True, text=True, env=clean_env()
    )
    assert made.returncode == 0 and keys.exists(), made.stderr

    procs = []
    try:
        # The sandbox from the repository, told where the viewer is and which public keys it registered.
        sandbox_env = clean_env(
            SANDBOX_URL=sandbox_url,
            VIEWER_URL=viewer_url,
            SCR_KEYS_FILE=str(keys),
            SCR_SYNTHEA_DIR=str(tmp_path / "no-synthea"),
        )
        sandbox_log = tmp_path / "sandbox.log"
        procs.append(
            start([sys.executable, "-m", "sandbox.serve", "--only", "sandbox"], ROOT, sandbox_env, sandbox_log)
        )
        wait_for(f"{sandbox_url}/fhir/gp/metadata", procs[-1], sandbox_log)

        # The installed viewer, from its own folder, with nothing but its configuration.
        viewer_log = tmp_path / "viewer.log"
        viewer_env = clean_env(SCR_CONFIG=str(config), SCR_SECRET_KEY="packaging-test-secret")
        procs.append(start([str(venv), "-m", "app"], site, viewer_env, viewer_log))
        wait_for(f"{viewer_url}/healthz", procs[-1], viewer_log)

        assert requests.get(f"{viewer_url}/readyz", timeout=10).status_code == 200
        for asset in ("css/app.css", "vendor/htmx/htmx.min.js"):
            assert requests.get(f"{viewer_url}/static/{asset}", timeout=10).status_code == 200, asset
        jwks = requests.get(f"{viewer_url}/.well-known/jwks.json", timeout=10).json()
        assert len(jwks["keys"]) == 2 and all("d" not in k for k in jwks["keys"])

        # sandbox EHR (scripted sign-in and launch) → viewer /launch → sandbox authorize → viewer /callback.
        http = requests.Session()
        http.cookies = LoopbackCookieJar()
        to_viewer = http.get(
            f"{sandbox_url}/ehr/launch", params={"user": "dr-patel", "patient": MARGARET}, allow_redirects=False
        )
        assert to_viewer.status_code == 302 and to_viewer.headers["Location"].startswith(f"{viewer_url}/launch?")
        to_authorize = http.get(to_viewer.headers["Location"], allow_redirects=False)
        assert to_authorize.status_code == 302, to_authorize.text[-2000:]
        assert to_authorize.headers["Location"].startswith(f"{sandbox_url}/auth/authorize")
        to_callback = http.get(to_authorize.headers["Location"], allow_redirects=False)
        assert to_callback.headers["Location"].startswith(f"{viewer_url}/callback?")
        landed = http.get(to_callback.headers["Location"])
        assert landed.status_code == 200, landed.text[-2000:]
        ctx = re.search(r"/r/([^/]+)/", landed.url).group(1)
        record = http.get(f"{viewer_url}/r/{ctx}/")
        assert record.status_code == 200
        assert "Margaret" in record.text and "999 100 0372" in record.text
        assert "Allergy to penicillin" in record.text  # gathered from the organisations with backend services

        # Migrations ran from the package data into the deployment's folder; nothing was written elsewhere.
        assert (site / "var" / "audit.sqlite3").exists()
    finally:
        codes = [stop(p) for p in reversed(procs)]
    assert codes[0] == 0, (tmp_path / "viewer.log").read_text()[-3000:]  # the viewer stops cleanly on SIGTERM


def test_sandbox_serve_starts_the_viewer_alone_from_a_configuration_without_a_sandbox_table(tmp_path):
    viewer_port = free_port()
    config = tmp_path / "viewer.toml"
    config.write_text(viewer_toml(viewer_port, free_port(), generate_dev_keys=True))
    assert "[sandbox" not in config.read_text()
    log = tmp_path / "serve.log"
    proc = start(
        [sys.executable, "-m", "sandbox.serve", "--only", "viewer", "--config", str(config)], ROOT, clean_env(), log
    )
    try:
        wait_for(f"http://127.0.0.1:{viewer_port}/healthz", proc, log)
        assert requests.get(f"http://127.0.0.1:{viewer_port}/healthz", timeout=10).json() == {"status": "ok"}
    finally:
        assert stop(proc) == 0, log.read_text()[-3000:]
    output = log.read_text()
    assert f"Viewer:                   http://127.0.0.1:{viewer_port}/" in output
    assert "simulated EHR" not in output
