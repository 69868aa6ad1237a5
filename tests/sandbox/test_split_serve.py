"""A sandbox split over processes (bench/launch_bench.py): one organisation's FHIR server per process, each at
an origin of its own, all accepting the tokens the authorisation server's process signs (SANDBOX_KEYS_FILE)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import requests
from joserfc import jwt

from sandbox.keys import ACCESS_TOKEN_ALG, ServerKeys
from tests.conftest import ROOT
from tests.installed import free_port


def test_shared_keys_are_written_once_and_read_by_everyone(tmp_path):
    path = tmp_path / "keys" / "sandbox.jwks.json"
    first, second = ServerKeys.shared(path), ServerKeys.shared(path)
    token = jwt.encode(
        {"alg": ACCESS_TOKEN_ALG, "kid": first.for_alg(ACCESS_TOKEN_ALG).kid},
        {"sub": "x"},
        first.for_alg(ACCESS_TOKEN_ALG),
    )
    assert jwt.decode(token, second.keyset, algorithms=[ACCESS_TOKEN_ALG]).claims == {"sub": "x"}
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox.serve", "--only", "sandbox", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 90
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "Press Ctrl+C" in line:
            return proc
    proc.kill()
    raise AssertionError("".join(lines))


def _stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def test_an_organisation_in_its_own_process_accepts_the_auth_servers_tokens(tmp_path):
    main_port, hospital_port = free_port(), free_port()
    public = {"main": f"http://127.0.0.1:{free_port()}", "hospital": f"http://127.0.0.1:{free_port()}"}
    env = {
        **os.environ,
        "SCR_CONFIG": str(ROOT / "sandbox" / "config.toml"),
        "SANDBOX_URL": public["main"],  # as behind proxies: the public origins are not where they listen
        "SANDBOX_ORG_URLS": f"hospital={public['hospital']}",
        "SANDBOX_KEYS_FILE": str(tmp_path / "sandbox-keys.json"),
        "SCR_KEYS_FILE": str(tmp_path / "viewer-keys.json"),
        "SCR_SYNTHEA_DIR": str(tmp_path / "no-synthea"),
    }
    main = _start(["--listen", f"127.0.0.1:{main_port}"], env)
    try:
        hospital = _start(["--orgs", "hospital", "--listen", f"127.0.0.1:{hospital_port}"], env)
        try:
            # The main process's documents name the hospital's own origin, and so does the hospital's process.
            config = requests.get(f"http://127.0.0.1:{main_port}/fhir/hospital/metadata", timeout=10)
            assert config.status_code == 200
            own = requests.get(f"http://127.0.0.1:{hospital_port}/fhir/hospital/metadata", timeout=10)
            assert own.status_code == 200 and public["hospital"] in own.text
            # Only the hospital's FHIR base is answered there.
            assert requests.get(f"http://127.0.0.1:{hospital_port}/fhir/gp/metadata", timeout=10).status_code == 404

            # A token signed with the shared keys, as the main process signs them (iss: its issuer; aud: the
            # hospital's public base), is accepted by the hospital's process.
            keys = ServerKeys.shared(env["SANDBOX_KEYS_FILE"])
            key = keys.for_alg(ACCESS_TOKEN_ALG)
            now = int(time.time())
            claims = {
                "iss": f"{public['main']}/auth",
                "aud": f"{public['hospital']}/fhir/hospital",
                "sub": "scr-viewer-backend",
                "client_id": "scr-viewer-backend",
                "scope": "system/*.rs",
                "iat": now,
                "exp": now + 300,
                "jti": "t1",
            }
            token = jwt.encode({"alg": ACCESS_TOKEN_ALG, "kid": key.kid}, claims, key)
            url = f"http://127.0.0.1:{hospital_port}/fhir/hospital/Patient"
            ok = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
            assert ok.status_code == 200, ok.text
            # The same token for another audience is refused, and a token from other keys too.
            wrong = jwt.encode(
                {"alg": ACCESS_TOKEN_ALG, "kid": key.kid}, claims | {"aud": f"{public['main']}/fhir/hospital"}, key
            )
            assert requests.get(url, headers={"Authorization": f"Bearer {wrong}"}, timeout=10).status_code == 401
            other = ServerKeys.generate().for_alg(ACCESS_TOKEN_ALG)
            forged = jwt.encode({"alg": ACCESS_TOKEN_ALG, "kid": key.kid}, claims, other)
            assert requests.get(url, headers={"Authorization": f"Bearer {forged}"}, timeout=10).status_code == 401
        finally:
            assert _stop(hospital) == 0
    finally:
        assert _stop(main) == 0


@pytest.mark.parametrize(
    ("args", "env_extra", "message"),
    [
        (["--orgs", "hospital"], {}, "--orgs and --listen need --only sandbox"),
        (["--only", "sandbox", "--orgs", "nowhere"], {}, "no organisation nowhere"),
        (["--only", "sandbox"], {"SANDBOX_ORG_URLS": "gp"}, "SANDBOX_ORG_URLS is org=http://host:port"),
    ],
)
def test_split_options_are_checked(tmp_path, args, env_extra, message):
    env = {
        **os.environ,
        "SCR_CONFIG": str(ROOT / "sandbox" / "config.toml"),
        "SCR_KEYS_FILE": str(tmp_path / "k.json"),
        "SCR_SYNTHEA_DIR": str(tmp_path / "no-synthea"),
        **env_extra,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "sandbox.serve", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=90
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
