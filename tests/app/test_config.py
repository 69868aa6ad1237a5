"""Configuration loading: environment expansion, validation, the issuer allow-list."""

from pathlib import Path

import pytest

from app.config import DEFAULT_CONFIG, ConfigError, expand, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scr.toml"
    path.write_text(text, encoding="utf-8")
    return path


MINIMAL = """
[viewer]
base_url = "https://scr.example.nhs.uk"
keys_file = "keys/viewer.json"

[[ehr]]
name = "Example GP system"
issuer = "https://ehr.example.nhs.uk/fhir/"
client_id = "scr"

[[source]]
id = "gp"
name = "Example Practice"
ods_code = "A12345"
kind = "gp"
base_url = "https://gp.example.nhs.uk/fhir"
client_id = "scr-backend"
timeout = 3
"""


def test_the_sandbox_config_loads_with_defaults():
    config = load_config(DEFAULT_CONFIG, env={})
    assert config.viewer.base_url == "http://127.0.0.1:8000"
    assert {e.issuer for e in config.ehrs} == {
        f"http://127.0.0.1:8001/fhir/{o}" for o in ("gp", "hospital", "community", "council")
    }
    assert [s.ods_code for s in config.sources] == ["Y01001", "RX9", "RY8", "L90001"]
    assert config.raw["sandbox"]["base_url"] == "http://127.0.0.1:8001"


def test_environment_overrides_urls():
    config = load_config(
        DEFAULT_CONFIG, env={"SANDBOX_URL": "http://127.0.0.1:9999", "VIEWER_URL": "http://127.0.0.1:9998"}
    )
    assert config.ehrs[0].issuer == "http://127.0.0.1:9999/fhir/gp"
    assert config.viewer.base_url == "http://127.0.0.1:9998"


def test_a_real_deployment_file(tmp_path):
    config = load_config(write(tmp_path, MINIMAL), env={"SCR_SECRET_KEY": "s3cret"})
    ehr = config.ehr_for_issuer("https://ehr.example.nhs.uk/fhir")
    assert ehr is not None and ehr.client_auth == "private_key_jwt" and ehr.signing_alg == "RS384"
    assert ehr.frame_origins == ("https://ehr.example.nhs.uk",)
    assert config.viewer.keys_file == (tmp_path / "keys" / "viewer.json").resolve()
    assert config.viewer.secret_key == "s3cret"
    assert config.source("gp").timeout == 3.0


def test_issuer_allow_list_is_exact(tmp_path):
    config = load_config(write(tmp_path, MINIMAL), env={})
    assert config.ehr_for_issuer("https://ehr.example.nhs.uk/fhir/evil") is None
    assert config.ehr_for_issuer("https://EHR.example.nhs.uk/fhir") is None
    assert config.ehr_for_issuer("https://attacker.example/fhir") is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('kind = "gp"', 'kind = "pharmacy"'), "kind must be one of"),
        (("timeout = 3", "timeout = 0"), "timeout must be between"),
        (('issuer = "https://ehr.example.nhs.uk/fhir/"', 'issuer = "ftp://x"'), r"absolute http\(s\) URL"),
        (('client_id = "scr"\n', 'client_id = "scr"\nclient_auth = "magic"\n'), "client_auth must be one of"),
        (('client_id = "scr"\n', 'client_id = "scr"\nclient_auth = "client_secret_basic"\n'), "client_secret_env"),
        (('client_id = "scr-backend"', ""), "backend_services needs a client_id"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, MINIMAL.replace(*change)), env={})


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml", env={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[viewer\n"), env={})


def test_expand_requires_set_variables():
    assert expand({"a": ["${X:-1}", "${Y}"]}, {"Y": "2"}) == {"a": ["1", "2"]}
    with pytest.raises(ConfigError, match="Z is not set"):
        expand("${Z}", {})


def test_duplicate_issuers_are_refused(tmp_path):
    text = MINIMAL + MINIMAL[MINIMAL.index("[[ehr]]") : MINIMAL.index("[[source]]")]
    with pytest.raises(ConfigError, match="duplicate ehr issuer"):
        load_config(write(tmp_path, text), env={})
