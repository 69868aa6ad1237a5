""" "Connecting a real EHR" is a tested walkthrough: the complete TOML in the README and in the configuration
reference is loaded exactly as written (only its example addresses replaced by the sandbox's test ports) and
a clinician of a generic SMART EHR — no NHS claims at all — completes a launch and sees the record from the
EHR's own organisation and the two Backend Services organisations, each under its configured name."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from app import create_app
from app.config import load_config
from launch.keys import load_keyset
from sandbox import create_sandbox_app
from sandbox.serve import SANDBOX_CONFIG
from tests.conftest import ROOT, _bind
from tests.conftest import test_env as sandbox_env

MARKER = "<!-- walkthrough: scr.toml"


def walkthrough_block(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    start = text.index("```toml\n", text.index(MARKER)) + len("```toml\n")
    return text[start : text.index("```\n", start)]


def test_the_readme_and_the_reference_show_the_same_file():
    assert walkthrough_block(ROOT / "README.md") == walkthrough_block(ROOT / "docs" / "configuration.md")


@pytest.fixture
def walkthrough(tmp_path):
    """The sandbox (its own config, GP in generic SMART mode) and a viewer configured by the walkthrough file."""
    sandbox_srv, viewer_srv = _bind(), _bind()
    env = sandbox_env(tmp_path, sandbox_srv.server_port, viewer_srv.server_port)
    sandbox_url, viewer_url = env["SANDBOX_URL"], env["VIEWER_URL"]
    load_keyset(Path(env["SCR_KEYS_FILE"]), generate=True)  # what `python -m launch.keys` would write
    text = walkthrough_block(ROOT / "README.md")
    for example, test in {
        "https://scr.example.nhs.uk": viewer_url,
        "/etc/scr/viewer.jwks.json": env["SCR_KEYS_FILE"],
        "https://ehr.hillside.example.nhs.uk/fhir/r4": f"{sandbox_url}/fhir/gp",
        "https://fhir.northgate.example.nhs.uk/r4": f"{sandbox_url}/fhir/hospital",
        "https://fhir.northgate-community.example.nhs.uk/r4": f"{sandbox_url}/fhir/community",
        "https://auth.northgate-community.example.nhs.uk/oauth2/token": f"{sandbox_url}/auth/token",
    }.items():
        assert example in text, example
        text = text.replace(example, test)
    path = tmp_path / "scr.toml"
    path.write_text(text, encoding="utf-8")
    viewer_config = load_config(path, env={})  # nothing from the environment: the file alone
    sandbox_srv.app = create_sandbox_app(load_config(SANDBOX_CONFIG, env=env))
    viewer_srv.app = create_app(viewer_config)
    for server in (sandbox_srv, viewer_srv):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield sandbox_url, viewer_url, viewer_srv.app, sandbox_srv.app
    for server in (sandbox_srv, viewer_srv):
        server.shutdown()


def test_the_walkthrough_file_completes_a_launch(walkthrough, http):
    sandbox_url, viewer_url, viewer_app, _ = walkthrough
    generic = http.post(f"{sandbox_url}/admin/smart/gp", json={"smart_mode": "generic"}, timeout=10)
    assert generic.status_code == 200, generic.text
    resp = http.get(f"{sandbox_url}/ehr/launch", params={"user": "dr-haddad", "patient": "9991000372"}, timeout=60)
    assert resp.status_code == 200, resp.text[:2000]
    assert resp.url.startswith(f"{viewer_url}/r/")
    if "/access/reason" in resp.url:  # Hillside (B86001) is not the sandbox patient's registered practice
        form = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', resp.text))
        resp = http.post(resp.url.split("?")[0], data={**form, "reason": "TREAT"}, timeout=30)
    assert resp.status_code == 200 and "Margaret" in resp.text
    ctx_id = re.search(r"/r/([^/?]+)/", resp.url).group(1)
    user = viewer_app.extensions["launch"].contexts.load(ctx_id).identity
    assert (user.name, user.role_source, user.ods) == ("Dr Leila Haddad", "practitioner_role", "B86001")
    for name in (
        "Hillside Surgery",
        "Northgate Hospitals NHS Foundation Trust",
        "Northgate Community and Mental Health NHS Trust",
    ):
        assert name in resp.text, name
    assert "Your clinical system" not in resp.text  # no nameless extra organisation
