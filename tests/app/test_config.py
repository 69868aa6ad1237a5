"""Configuration loading: environment expansion, validation, the issuer allow-list."""

import re
from dataclasses import FrozenInstanceError
from pathlib import Path

import pytest

from app.access.policy import DEFAULTS, AccessRules
from app.config import (
    ACCEPTED_KEYS,
    ACCESS_DEFAULTS,
    SCHEMA,
    AlertSettings,
    AuditSettings,
    ConfigError,
    StateSettings,
    TrainingAttestation,
    all_tables,
    expand,
    load_config,
)
from sandbox.serve import SANDBOX_CONFIG
from sandbox.settings import ACCEPTED_KEYS as SANDBOX_KEYS
from sandbox.settings import SANDBOX, sandbox_settings


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
source = "gp"

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
    config = load_config(SANDBOX_CONFIG, env={})
    assert config.viewer.base_url == "http://127.0.0.1:8000"
    assert {e.issuer for e in config.ehrs} == {
        f"http://127.0.0.1:8001/fhir/{o}" for o in ("gp", "hospital", "community", "council")
    }
    assert [s.ods_code for s in config.sources] == ["Y01001", "RX9", "RY8", "L90001"]
    assert config.raw["sandbox"]["base_url"] == "http://127.0.0.1:8001"


def test_environment_overrides_urls():
    config = load_config(
        SANDBOX_CONFIG, env={"SANDBOX_URL": "http://127.0.0.1:9999", "VIEWER_URL": "http://127.0.0.1:9998"}
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


EHR_LINES = 'issuer = "https://ehr.example.nhs.uk/fhir/"\nclient_id = "scr"\nsource = "gp"\n'


def ehr_with(tmp_path, lines: str, **env):
    """MINIMAL with the [[ehr]] entry's binding lines replaced by ``lines``."""
    text = MINIMAL.replace(EHR_LINES, 'issuer = "https://ehr.example.nhs.uk/fhir/"\nclient_id = "scr"\n' + lines)
    return load_config(write(tmp_path, text), env=env)


def test_an_ehr_bound_to_its_source_is_that_organisation(tmp_path):
    ehr = ehr_with(tmp_path, 'source = "gp"\n').ehrs[0]
    assert (ehr.source, ehr.ods_code, ehr.kind, ehr.timeout, ehr.read_with) == ("gp", "A12345", "gp", 3.0, "user_token")
    assert ehr.identity.organisation.ods == "A12345" and ehr.identity.organisation.name == "Example Practice"
    assert ehr.identity.order == ("cis2_claims", "practitioner_role", "register")
    assert ehr.identity.default_grant is None  # off unless configured


def test_an_ehr_at_a_sources_base_or_with_its_ods_code_is_bound_without_saying_so(tmp_path):
    same_ods = ehr_with(tmp_path, 'ods_code = "A12345"\nkind = "gp"\n').ehrs[0]
    assert same_ods.source == "gp"
    text = MINIMAL.replace('issuer = "https://ehr.example.nhs.uk/fhir/"', 'issuer = "https://gp.example.nhs.uk/fhir"')
    text = text.replace('source = "gp"\n', "")
    assert load_config(write(tmp_path, text), env={}).ehrs[0].source == "gp"


def test_an_unbound_ehr_names_its_own_organisation(tmp_path):
    ehr = ehr_with(tmp_path, 'ods_code = "NWX01"\nkind = "community"\ntimeout = 8\n').ehrs[0]
    assert (ehr.source, ehr.ods_code, ehr.kind, ehr.timeout) == (None, "NWX01", "community", 8.0)
    assert ehr.identity.organisation.ods == "NWX01"


def test_ehr_default_is_explicit(tmp_path):
    lines = 'source = "gp"\nidentity_sources = ["practitioner_role", "ehr_default"]\n'
    ehr = ehr_with(tmp_path, lines + 'default_role_code = "R8000"\ndefault_activity_codes = ["B0370"]\n').ehrs[0]
    assert ehr.identity.order == ("practitioner_role", "ehr_default")
    grant = ehr.identity.default_grant
    assert (grant.role_codes, grant.activity_codes, grant.source) == (("R8000",), ("B0370",), "ehr_default")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ('source = "hospital"\n', r"source 'hospital' is not a \[\[source\]\] id \(known: gp\)"),
        ("", r"belongs to no \[\[source\]\]: set `source` .* or give its own `ods_code` and `kind`"),
        ('ods_code = "NWX01"\n', "or give its own `ods_code` and `kind`"),
        ('ods_code = "NWX01"\nkind = "gp"\nread_with = "backend_services"\n', "read_with = 'backend_services' needs"),
        ('source = "gp"\nread_with = "magic"\n', "read_with must be one of user_token, backend_services"),
        ('source = "gp"\nidentity_sources = ["cis2", "register"]\n', r"identity_sources must list only .*'cis2'"),
        ('source = "gp"\nidentity_sources = ["register", "register"]\n', "must not list a source twice"),
        ('source = "gp"\nidentity_sources = []\n', "must list at least one identity source"),
        ('source = "gp"\nidentity_sources = ["ehr_default"]\n', "lists 'ehr_default' but default_activity_codes"),
        ('source = "gp"\ndefault_activity_codes = ["B0370"]\n', "identity_sources does not list 'ehr_default'"),
    ],
)
def test_misconfigured_ehrs_fail_at_start(tmp_path, lines, message):
    with pytest.raises(ConfigError, match=message):
        ehr_with(tmp_path, lines)


def test_a_source_may_name_its_token_endpoint(tmp_path):
    text = MINIMAL.replace("timeout = 3\n", 'timeout = 3\ntoken_url = "https://gp.example.nhs.uk/oauth/token"\n')
    assert load_config(write(tmp_path, text), env={}).source("gp").token_url == "https://gp.example.nhs.uk/oauth/token"
    with pytest.raises(ConfigError, match="token_url must be an absolute"):
        load_config(write(tmp_path, text.replace("https://gp.example.nhs.uk/oauth/token", "token")), env={})


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


# ---- every table typed and checked ------------------------------------------------------------------

FULL = (
    MINIMAL
    + """
[state]
redis_url = "redis://redis.internal:6379/0"

[audit]
database_url = "${SCR_DATABASE_URL:-}"
sqlite_path = "audit/audit.sqlite3"

[alerts]
webhook_urls = ["https://inbox.example.nhs.uk/alerts", "${SECOND_ALERT_URL:-}"]
timeout = 2

[access]
view_summary = ["B0370"]
break_glass_minutes = 15
reason_codes = ["TREAT", "COC"]

[[access.training]]
sds_user_id = "555000000004"
completed = "2026-03-01"

[limits]
page_mb = 8

[session]
idle_minutes = 10

[sandbox]
base_url = "http://127.0.0.1:8001"

[[sandbox.client]]
client_id = "scr-viewer"

[[sandbox.organisation]]
id = "gp"
name = "Example Practice"
ods_code = "A12345"
faults = { latency_ms = 0, mode = "ok" }
"""
)
VIEWER_TABLES = sorted(ACCEPTED_KEYS)
VIEWER_BLOCK = '[viewer]\nbase_url = "https://scr.example.nhs.uk"\nkeys_file = "keys/viewer.json"\n'
SANDBOX_TABLES = sorted(SANDBOX_KEYS)


def insert_after(text: str, header: str, line: str) -> str:
    """Add ``line`` just after the first ``header`` line (the table it belongs to)."""
    head, sep, tail = text.partition(header + "\n")
    assert sep, header
    return head + sep + line + "\n" + tail


def header_of(table: str) -> str:
    return f"[[{table}]]" if all_tables({**SCHEMA, "sandbox": SANDBOX})[table].array else f"[{table}]"


def set_key(text: str, header: str, line: str) -> str:
    """Set ``line``'s key in the table under ``header``: replace it there, or add it after the header."""
    key = line.split("=")[0].strip()
    head, sep, rest = text.partition(header + "\n")
    assert sep, header
    body, nxt, tail = rest.partition("\n[")
    if re.search(rf"^{key} = .*$", body, flags=re.M):
        body = re.sub(rf"^{key} = .*$", line, body, count=1, flags=re.M)
    else:
        body = line + "\n" + body
    return head + sep + body + nxt + tail


def with_unknown_key(table: str, key: str = "bogus_key") -> str:
    if table == "sandbox.organisation.faults":
        return FULL.replace('mode = "ok" }', f'mode = "ok", {key} = 1 }}')
    return insert_after(FULL, header_of(table), f"{key} = 1")


def test_a_full_file_loads_into_typed_settings(tmp_path):
    config = load_config(write(tmp_path, FULL), env={"REDIS_URL": ""})
    assert config.state == StateSettings(redis_url="redis://redis.internal:6379/0", key_prefix="scr:")
    assert config.audit.database_url is None
    assert config.audit.sqlite_path == (tmp_path / "audit" / "audit.sqlite3").resolve()
    assert config.audit.url == f"sqlite:///{(tmp_path / 'audit' / 'audit.sqlite3').resolve()}"
    assert config.alerts == AlertSettings(webhook_urls=("https://inbox.example.nhs.uk/alerts",), timeout=2.0)
    assert isinstance(config.alerts.timeout, float)
    assert config.access.view_summary == frozenset({"B0370"})
    assert config.access.view_detailed == frozenset({"B0360"})  # the default
    assert config.access.break_glass_minutes == 15
    assert config.access.reason_codes == ("TREAT", "COC")
    assert config.access.training == (TrainingAttestation("555000000004", "2026-03-01"),)
    settings = sandbox_settings(config)
    assert settings.clients[0].auth_method == "private_key_jwt" and settings.clients[0].name == "scr-viewer"
    assert settings.launch_url == "https://scr.example.nhs.uk/launch"
    with pytest.raises(FrozenInstanceError):
        config.access.break_glass_minutes = 99


def test_defaults_when_the_tables_are_absent(tmp_path):
    config = load_config(write(tmp_path, MINIMAL), env={})
    assert config.state == StateSettings(redis_url="", key_prefix="scr:")
    assert config.audit == AuditSettings(database_url=None, sqlite_path=(tmp_path / "../var/audit.sqlite3").resolve())
    assert config.alerts == AlertSettings(webhook_urls=(), timeout=3.0, max_attempts=6, retry_seconds=5.0)
    assert config.access.training == ()
    for key, default in DEFAULTS.items():
        value = getattr(config.access, key)
        if key == "reason_codes":
            assert value == tuple(default)
        elif isinstance(default, list | tuple):
            assert value == frozenset(default), key
        else:
            assert value == default and type(value) is int, key


def test_access_defaults_are_the_policy_defaults():
    """One list of defaults: the policy's rules without an [access] table are the configuration's defaults."""
    assert DEFAULTS is ACCESS_DEFAULTS
    rules = AccessRules.from_config(None)
    assert rules.break_glass_minutes == ACCESS_DEFAULTS["break_glass_minutes"]
    assert rules.sensitive_labels == frozenset(ACCESS_DEFAULTS["sensitive_labels"])


def test_database_url_wins_over_sqlite(tmp_path):
    url = "postgresql+psycopg://scr@db.internal/scr"
    config = load_config(write(tmp_path, FULL), env={"SCR_DATABASE_URL": url})
    assert config.audit.database_url == url and config.audit.url == url


@pytest.mark.parametrize(
    ("env", "url", "prefix"),
    [
        ({}, "redis://redis.internal:6379/0", "scr:"),
        ({"REDIS_URL": ""}, "redis://redis.internal:6379/0", "scr:"),
        ({"REDIS_URL": "rediss://:pw@other:6380/1"}, "rediss://:pw@other:6380/1", "scr:"),
        ({"SCR_REDIS_PREFIX": "scr-test-1:"}, "redis://redis.internal:6379/0", "scr-test-1:"),
    ],
)
def test_redis_url_from_the_environment_wins_over_the_file(tmp_path, env, url, prefix):
    config = load_config(write(tmp_path, FULL), env=env)
    assert config.state.redis_url == url and config.state.key_prefix == prefix


def test_redis_url_without_the_table(tmp_path):
    assert load_config(write(tmp_path, MINIMAL), env={"REDIS_URL": "redis://r:6379/2"}).state.redis_url == (
        "redis://r:6379/2"
    )
    with pytest.raises(ConfigError, match=r"\[state\] redis_url \(or REDIS_URL\) must be a redis://"):
        load_config(write(tmp_path, MINIMAL), env={"REDIS_URL": "http://r:6379"})


@pytest.mark.parametrize("table", VIEWER_TABLES)
def test_an_unknown_key_in_any_viewer_table_names_file_table_and_key(tmp_path, table):
    path = write(tmp_path, with_unknown_key(table))
    header = re.escape(header_of(table))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: {header}.* unknown key 'bogus_key'"):
        load_config(path, env={})


@pytest.mark.parametrize("table", SANDBOX_TABLES)
def test_an_unknown_key_in_any_sandbox_table_is_refused_by_the_sandbox_only(tmp_path, table):
    path = write(tmp_path, with_unknown_key(table))
    config = load_config(path, env={})  # the viewer does not interpret [sandbox]
    header = re.escape(header_of(table))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: {header}.* unknown key 'bogus_key'"):
        sandbox_settings(config)


def test_unknown_keys_suggest_the_closest_known_key(tmp_path):
    path = write(tmp_path, insert_after(FULL, "[access]", "break_glass_minuts = 30"))
    message = f"{path}: [access] unknown key 'break_glass_minuts' (did you mean 'break_glass_minutes'?)"
    with pytest.raises(ConfigError) as err:
        load_config(path, env={})
    assert str(err.value) == message


def test_an_unknown_key_in_an_array_entry_names_the_entry(tmp_path):
    text = MINIMAL.replace("timeout = 3", "timout = 3")
    with pytest.raises(ConfigError, match=r"\[\[source\]\] 'gp' unknown key 'timout' \(did you mean 'timeout'\?\)"):
        load_config(write(tmp_path, text), env={})
    faults = FULL.replace('mode = "ok" }', 'mode = "ok", latency = 5 }')
    with pytest.raises(ConfigError, match=r"\[sandbox.organisation.faults\] \(in \[\[sandbox.organisation\]\] 'gp'\)"):
        sandbox_settings(load_config(write(tmp_path, faults), env={}))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[acess]\nview_summary = ["B0370"]\n', r"unknown table \[acess\] \(did you mean \[access\]\?\)"),
        ("[logging]\nlevel = 'INFO'\n", r"unknown table \[logging\] \(accepted: \[viewer\], \[\[ehr\]\]"),
        ("[[sources]]\nid = 'x'\n", r"unknown table \[\[sources\]\] \(did you mean \[\[source\]\]\?\)"),
    ],
)
def test_an_unknown_table_is_an_error(tmp_path, text, message):
    path = write(tmp_path, FULL + "\n" + text)
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: {message}"):
        load_config(path, env={})


def test_a_key_outside_any_table_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown top-level key 'debug'"):
        load_config(write(tmp_path, "debug = true\n" + FULL), env={})


@pytest.mark.parametrize(
    ("header", "line", "message"),
    [
        ("[access]", 'break_glass_minutes = "30"', r"\[access\] break_glass_minutes must be an integer"),
        ("[access]", "break_glass_min_justification = true", r"\[access\] break_glass_min_justification must be an"),
        ("[access]", 'sensitive_codes = "http://snomed.info/sct|1"', r"\[access\] sensitive_codes must be a list of"),
        ("[access]", 'admin_roles = ["R8006", 8008]', r"\[access\] admin_roles must be a list of strings"),
        ("[access]", "break_glass_minutes = 0", r"\[access\] break_glass_minutes must be at least 1"),
        ("[viewer]", 'generate_dev_keys = "yes"', r"\[viewer\] generate_dev_keys must be true or false"),
        ("[viewer]", "support_phone = 1134960000", r"\[viewer\] support_phone must be a string"),
        ("[[ehr]]", "standalone = 1", r"\[\[ehr\]\] 'Example GP system' standalone must be true or false"),
        ("[[ehr]]", 'frame_origins = "https://x.example"', r"\[\[ehr\]\] .* frame_origins must be a list of strings"),
        ("[[ehr]]", 'signing_alg = "HS256"', r"\[\[ehr\]\] .* signing_alg must be one of RS384, ES384"),
        ("[[source]]", 'signing_alg = "PS256"', r"\[\[source\]\] 'gp' signing_alg must be one of"),
        ("[state]", "redis_url = 6379", r"\[state\] redis_url must be a string"),
        ("[audit]", "sqlite_path = false", r"\[audit\] sqlite_path must be a string"),
        ("[alerts]", 'webhook_urls = "https://x.example"', r"\[alerts\] webhook_urls must be a list of strings"),
        ("[alerts]", 'webhook_urls = ["mailto:x@example.nhs.uk"]', r"\[alerts\] webhook_urls must be an absolute"),
        ("[alerts]", "max_attempts = 2.5", r"\[alerts\] max_attempts must be an integer"),
        ("[alerts]", "max_attempts = 0", r"\[alerts\] max_attempts must be at least 1"),
        ("[alerts]", 'retry_seconds = "5"', r"\[alerts\] retry_seconds must be a number"),
        ("[alerts]", "timeout = true", r"\[alerts\] timeout must be a number"),
        ("[[access.training]]", 'completed = "1 March 2026"', r"\[\[access.training\]\] '555000000004' completed must"),
    ],
)
def test_a_wrong_type_names_file_table_key_and_expected_type(tmp_path, header, line, message):
    path = write(tmp_path, set_key(FULL, header, line))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: {message}"):
        load_config(path, env={})


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (VIEWER_BLOCK, 'viewer = "x"\n', r"\[viewer\] must be a table"),
        ("[[ehr]]", "[ehr]", r"\[\[ehr\]\] must be an array of tables \(write \[\[ehr\]\]\)"),
        ('sds_user_id = "555000000004"', "sds_user_id = 555000000004", r"sds_user_id must be a string"),
        ('completed = "2026-03-01"', 'completed = "2026-02-30"', r"completed is not a real date"),
        ('completed = "2026-03-01"', "", r"\[\[access.training\]\] '555000000004' 'completed' is required"),
    ],
)
def test_structural_mistakes_are_clear(tmp_path, old, new, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, FULL.replace(old, new, 1)), env={})


def test_a_toml_date_is_accepted_for_training(tmp_path):
    config = load_config(write(tmp_path, FULL.replace('completed = "2026-03-01"', "completed = 2026-03-01")), env={})
    assert config.access.training[0].completed == "2026-03-01"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("[sandbox]\n", "[sandbox]\naccess_token_lifetime = '3600'\n", r"\[sandbox\] access_token_lifetime must be an"),
        ('mode = "ok" }', 'mode = "slow" }', r"\[sandbox.organisation.faults\] .* mode must be one of ok, down"),
        ("latency_ms = 0,", "latency_ms = 500000,", r"latency_ms must be from 0 to 120000 milliseconds"),
        ('client_id = "scr-viewer"\n\n', 'client_id = "scr-viewer"\ngrant_types = ["password"]\n\n', r"grant_types"),
        ('client_id = "scr-viewer"\n\n', 'client_id = "scr-viewer"\nauth_method = "tls"\n\n', r"auth_method must be"),
        ('client_id = "scr-viewer"\n\n', 'client_id = "scr-viewer"\nredirect_uris = "x"\n\n', r"must be a list of"),
    ],
)
def test_sandbox_type_errors(tmp_path, old, new, message):
    path = write(tmp_path, FULL.replace(old, new, 1))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: .*{message}"):
        sandbox_settings(load_config(path, env={}))


def test_a_missing_variable_names_the_file_and_key(tmp_path):
    path = write(tmp_path, MINIMAL.replace("https://scr.example.nhs.uk", "${SCR_PUBLIC_URL}"))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: viewer.base_url: environment variable"):
        load_config(path, env={})


def test_messages_use_the_path_relative_to_the_working_directory(tmp_path, monkeypatch):
    write(tmp_path, insert_after(FULL, "[access]", "break_glass_minuts = 30"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"^scr\.toml: \[access\] unknown key"):
        load_config("scr.toml", env={})


def test_the_shipped_sandbox_config_loads_cleanly_everywhere():
    config = load_config(SANDBOX_CONFIG, env={})
    assert config.alerts.webhook_urls == ("http://127.0.0.1:8001/ehr/inbox/messages",)
    assert config.audit.url.endswith("/var/audit.sqlite3") and config.audit.database_url is None
    assert config.access.training == (TrainingAttestation("555000000004", "2026-03-01"),)
    assert config.state.redis_url == ""
    settings = sandbox_settings(config)
    assert [o.id for o in settings.organisations] == ["gp", "hospital", "community", "council"]
    assert {c.client_id for c in settings.clients} >= {"scr-viewer", "scr-viewer-backend"}


def test_accepted_keys_come_from_the_schema():
    assert set(ACCEPTED_KEYS) >= {"viewer", "ehr", "source", "state", "audit", "alerts", "access", "access.training"}
    assert "limits" in ACCEPTED_KEYS
    assert ACCEPTED_KEYS["access"] == set(DEFAULTS)
    assert set(SANDBOX_KEYS) == {"sandbox", "sandbox.client", "sandbox.organisation", "sandbox.organisation.faults"}
