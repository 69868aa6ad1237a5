"""`make run`'s entry point, started for real as a process: both servers up, URL printed, clean stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import requests

from tests.conftest import ROOT
from tests.installed import free_port


def test_serve_starts_sandbox_and_viewer_and_prints_the_url(tmp_path):
    sandbox_port, viewer_port = free_port(), free_port()
    env = {
        **os.environ,
        "SANDBOX_URL": f"http://127.0.0.1:{sandbox_port}",
        "VIEWER_URL": f"http://127.0.0.1:{viewer_port}",
        "SCR_KEYS_FILE": str(tmp_path / "keys.json"),
        "SCR_CONFIG": str(ROOT / "sandbox" / "config.toml"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox.serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Press Ctrl+C" in line:
                break
        output = "".join(lines)
        assert f"Open the simulated EHR:   http://127.0.0.1:{sandbox_port}/" in output, output
        ehr = requests.get(f"http://127.0.0.1:{sandbox_port}/", timeout=10)
        assert ehr.status_code == 200 and "Sign in to the sandbox EHR" in ehr.text
        viewer = requests.get(f"http://127.0.0.1:{viewer_port}/healthz", timeout=10)
        assert viewer.json() == {"status": "ok"}
        jwks = requests.get(f"http://127.0.0.1:{viewer_port}/.well-known/jwks.json", timeout=10).json()
        assert (tmp_path / "keys.json").exists() and len(jwks["keys"]) == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


def test_serve_refuses_to_listen_beyond_loopback(tmp_path):
    env = {**os.environ, "SANDBOX_URL": "http://0.0.0.0:18001", "SCR_KEYS_FILE": str(tmp_path / "k.json")}
    proc = subprocess.run(
        [sys.executable, "-m", "sandbox.serve"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "only listens on loopback" in proc.stderr


def test_serve_reports_configuration_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[viewer\n")
    proc = subprocess.run(
        [sys.executable, "-m", "sandbox.serve", "--config", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "configuration error" in proc.stderr and "not valid TOML" in proc.stderr
