"""Start-up checks that need the network: a Backend Services source must say where its token endpoint is."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from app.__main__ import main
from app.config import ConfigError, load_config
from app.startup import check_sources

TOML = """
[viewer]
base_url = "http://127.0.0.1:1"
keys_file = "keys.json"
generate_dev_keys = true

[[ehr]]
issuer = "https://ehr.example.nhs.uk/fhir"
client_id = "scr"
source = "org"

[audit]
sqlite_path = "audit.sqlite3"

[[source]]
id = "org"
name = "Organisation"
ods_code = "X1"
kind = "acute"
base_url = "BASE"
client_id = "scr-backend"
"""


class Documents:
    """A FHIR base whose /.well-known/smart-configuration and /metadata answer what a test sets (404 if None)."""

    def __init__(self) -> None:
        self.answers: dict[str, dict | None] = {}
        self.seen: list[str] = []
        docs = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                docs.seen.append(self.path)
                body = next((v for k, v in docs.answers.items() if self.path.endswith(k)), None)
                data = json.dumps(body).encode() if body is not None else b"{}"
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.server_port}/fhir"


@pytest.fixture
def documents():
    docs = Documents()
    yield docs
    docs.server.shutdown()


def config_for(tmp_path: Path, base: str, extra: str = ""):
    path = tmp_path / "scr.toml"
    path.write_text(TOML.replace("BASE", base) + extra, encoding="utf-8")
    return load_config(path, env={})


def test_a_token_endpoint_from_the_smart_configuration_is_enough(tmp_path, documents):
    documents.answers["/.well-known/smart-configuration"] = {"token_endpoint": f"{documents.base}/token"}
    assert check_sources(config_for(tmp_path, documents.base)) == []


def test_a_capability_statement_with_the_smart_extension_is_enough(tmp_path, documents):
    token = {"url": "token", "valueUri": "http://127.0.0.1/token"}
    ext = {"url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris", "extension": [token]}
    documents.answers["/metadata"] = {
        "resourceType": "CapabilityStatement",
        "rest": [{"security": {"extension": [ext]}}],
    }
    assert check_sources(config_for(tmp_path, documents.base)) == []


def test_a_source_that_answers_without_any_token_endpoint_stops_the_start(tmp_path, documents, capsys):
    documents.answers["/metadata"] = {"resourceType": "CapabilityStatement", "rest": [{"mode": "server"}]}
    config = config_for(tmp_path, documents.base)
    with pytest.raises(ConfigError, match=r"\[\[source\]\] 'org' offers no Backend Services token endpoint.*token_url"):
        check_sources(config)
    assert main(["--config", str(config.path), "--port", "0"]) == 2  # the entry point refuses to start
    assert "offers no Backend Services token endpoint" in capsys.readouterr().err


def test_an_explicit_token_url_needs_no_request(tmp_path, documents):
    config = config_for(tmp_path, documents.base, 'token_url = "http://127.0.0.1:9/token"\n')
    assert check_sources(config) == [] and documents.seen == []


def test_an_unreachable_source_is_only_a_warning(tmp_path):
    warnings = check_sources(config_for(tmp_path, "http://127.0.0.1:9/fhir"))
    assert len(warnings) == 1 and "'org': could not be asked for its token endpoint now" in warnings[0]


def test_token_url_without_backend_services_is_a_mistake(tmp_path):
    with pytest.raises(ConfigError, match="token_url is set but auth is 'none'"):
        config_for(tmp_path, "http://127.0.0.1:9/fhir", 'auth = "none"\ntoken_url = "http://127.0.0.1:9/token"\n')
