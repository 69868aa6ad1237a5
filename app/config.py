"""Typed settings loaded from one TOML file (``SCR_CONFIG``) plus environment variables.

The TOML file describes *what* the viewer talks to (registered host EHRs, the organisations' FHIR
sources, the audit database, alert destinations, access rules); environment variables carry secrets and
service URLs. Any string in the file may refer to the environment as ``${NAME}`` or ``${NAME:-default}``,
so one file serves a laptop, CI (random ports) and production without edits.

Every table is declared once in ``SCHEMA`` (its keys, their types and defaults); one generic validator,
``check_table``, applies it: an unknown table or key, a wrong type or a missing required key is a
``ConfigError`` naming the file, the table and the key. ``ACCEPTED_KEYS`` lists what each table accepts
(docs/configuration.md is tested against it). The ``[sandbox]`` table belongs to the sandbox
(``sandbox/settings.py`` validates it with the same machinery); the viewer only knows it is there.
"""

from __future__ import annotations

import datetime as dt
import difflib
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from launch.registration import BACKEND_SERVICES, USER_TOKEN, EhrRegistration, Source
from launch.roles import DEFAULT_IDENTITY_ORDER, EHR_DEFAULT, IDENTITY_SOURCES, IdentityPolicy, Organisation, RoleGrant

NO_CONFIG = (
    "no configuration file: set SCR_CONFIG to the viewer's TOML file "
    "(docs/configuration.md describes every table and key)"
)
CLIENT_AUTH_METHODS = ("private_key_jwt", "client_secret_basic", "none")
SOURCE_AUTH_METHODS = ("backend_services", "none")
SOURCE_KINDS = ("gp", "acute", "community", "mental_health", "community_mental_health", "social_care")
SIGNING_ALGS = ("RS384", "ES384")
TRUSTED_FACTS = ("care_team", "episodes")  # [[source]] trusted_for: what it may say about other organisations
READ_WITH = (USER_TOKEN, BACKEND_SERVICES)
REDIS_SCHEMES = ("redis", "rediss", "unix")

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class ConfigError(ValueError):
    """The configuration file is missing, malformed or inconsistent."""


# ---------------------------------------------------------------------------------------------------------
# The schema: what each table accepts. One generic validator applies it.

REQUIRED: Any = type("Required", (), {"__repr__": lambda self: "REQUIRED"})()

STRING, BOOLEAN, INTEGER, NUMBER, STRINGS, DATE, TABLE = (
    "string",
    "boolean",
    "integer",
    "number",
    "strings",
    "date",
    "table",
)
_EXPECTED = {
    STRING: "must be a string",
    BOOLEAN: "must be true or false",
    INTEGER: "must be an integer",
    NUMBER: "must be a number",
    STRINGS: "must be a list of strings",
    DATE: "must be a date written YYYY-MM-DD",
    TABLE: "must be a table",
}


@dataclass(frozen=True)
class Key:
    """One key of a table: its TOML type, its default (``REQUIRED`` when it must be given), the values it
    may take, and an optional check returning what is wrong (e.g. ``"must be at least 1"``) or None."""

    type: str
    default: Any = None
    choices: tuple[str, ...] = ()
    check: Callable[[Any], str | None] | None = None


@dataclass(frozen=True)
class Table:
    """A table (``[name]``) or an array of tables (``[[name]]``); ``name`` is the dotted TOML name.

    ``label`` names the keys that identify an entry of an array in messages; ``tables`` are the tables
    nested inside this one (their key is the last part of their name)."""

    name: str
    keys: Mapping[str, Key]
    array: bool = False
    label: tuple[str, ...] = ()
    tables: tuple[Table, ...] = ()

    @property
    def key(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    @property
    def header(self) -> str:
        return f"[[{self.name}]]" if self.array else f"[{self.name}]"

    def walk(self) -> list[Table]:
        """This table and every table nested in it."""
        return [self, *(t for sub in self.tables for t in sub.walk())]


def absolute_url(value: Any) -> str | None:
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return f"must be an absolute http(s) URL, got {v!r}"
    return None


def at_least(minimum: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= minimum else f"must be at least {minimum:g}"


def more_than(minimum: float, maximum: float, unit: str = "") -> Callable[[Any], str | None]:
    return lambda v: None if minimum < v <= maximum else f"must be between {minimum:g} and {maximum:g}{unit}"


def each_of(choices: tuple[str, ...]) -> Callable[[Any], str | None]:
    def check(values: tuple[str, ...]) -> str | None:
        wrong = [v for v in values if v not in choices]
        if wrong:
            return f"must list only {', '.join(choices)}; got {', '.join(map(repr, wrong))}"
        return "must not list a source twice" if len(set(values)) != len(values) else None

    return check


def redis_url(value: Any) -> str | None:
    if value and urlsplit(value).scheme not in REDIS_SCHEMES:
        return f"must be a redis://, rediss:// or unix:// URL, got {value!r}"
    return None


def not_empty(value: Any) -> str | None:
    return None if value else "must not be empty"


# The [access] defaults (the same as app.access.policy.DEFAULTS; a test keeps the two equal).
ACCESS_DEFAULTS: dict[str, Any] = {
    "view_summary": ("B0370", "B0401"),
    "view_detailed": ("B0360",),
    "emergency_access": ("B0168",),
    "legal_override": ("B0082",),
    "sensitive_records": ("B1611",),
    "privacy_officer_roles": ("R0001", "R5105"),
    "privacy_officer_activities": ("B0015", "B0016"),
    "admin_roles": ("R8006", "R8008", "R8009", "R8010"),
    "reason_codes": ("TREAT", "COC", "ETREAT"),
    "break_glass_minutes": 30,
    "break_glass_min_justification": 25,
    "break_glass_min_words": 3,  # a justification is words: at least this many of two letters or more
    "break_glass_min_letters": 6,  # ... and at least this many different letters (not one key held down)
    "encounter_recent_hours": 24,  # a finished launch encounter still counts this long after period.end
    "refresh_interval_seconds": 30,  # ?refresh=1 fetches again at most this often per launch
    "sensitive_labels": (
        "R",
        "V",
        "HIV",
        "STD",
        "SEX",
        "PSY",
        "MH",
        "BH",
        "ETH",
        "SUD",
        "SDV",
        "SPI",
        "GDIS",
        "PREGNANT",
    ),
    "sensitive_codes": (),
    "register_manager_roles": ("R5080",),  # Registration Authority Manager (privacy officers manage it too)
    "register_default_days": 365,
}
_ACCESS_CHECKS = {
    "break_glass_minutes": at_least(1),
    "break_glass_min_justification": at_least(0),
    "break_glass_min_words": at_least(0),
    "break_glass_min_letters": at_least(0),
    "encounter_recent_hours": at_least(0),
    "refresh_interval_seconds": at_least(0),
    "register_default_days": at_least(1),
}

VIEWER = Table(
    "viewer",
    {
        "base_url": Key(STRING, REQUIRED, check=absolute_url),
        "keys_file": Key(STRING, "../var/keys/viewer.jwks.json"),
        "generate_dev_keys": Key(BOOLEAN, False),
        "secret_key_env": Key(STRING, "SCR_SECRET_KEY"),
        "metrics_token_env": Key(STRING, "SCR_METRICS_TOKEN"),  # /metrics needs this bearer token when set
        "support_email": Key(STRING, ""),
        "support_phone": Key(STRING, ""),
    },
)
EHR = Table(
    "ehr",
    {
        "name": Key(STRING),  # default: the issuer
        "issuer": Key(STRING, REQUIRED, check=absolute_url),
        "client_id": Key(STRING, REQUIRED),
        "client_auth": Key(STRING, "private_key_jwt", choices=CLIENT_AUTH_METHODS),
        "signing_alg": Key(STRING, "RS384", choices=SIGNING_ALGS),
        "client_secret_env": Key(STRING),
        "standalone": Key(BOOLEAN, False),
        "frame_origins": Key(STRINGS, check=absolute_url),  # default: the issuer's origin
        "id_token_issuer": Key(STRING, check=absolute_url),
        # The organisation the EHR belongs to: a [[source]] id, or (unbound) its own ODS code, kind and deadline.
        "source": Key(STRING),
        "read_with": Key(STRING, USER_TOKEN, choices=READ_WITH),
        "ods_code": Key(STRING),
        "kind": Key(STRING, choices=SOURCE_KINDS),
        "timeout": Key(NUMBER, 5.0, check=more_than(0, 120, " seconds")),
        # Where users' national RBAC codes come from, first that yields any (docs/configuration.md).
        "identity_sources": Key(STRINGS, DEFAULT_IDENTITY_ORDER, check=each_of(IDENTITY_SOURCES)),
        "default_role_code": Key(STRING),
        "default_activity_codes": Key(STRINGS, ()),
    },
    array=True,
    label=("name", "issuer"),
)
SOURCE = Table(
    "source",
    {
        "id": Key(STRING, REQUIRED),
        "name": Key(STRING, REQUIRED),
        "ods_code": Key(STRING, REQUIRED),
        "kind": Key(STRING, REQUIRED, choices=SOURCE_KINDS),
        "base_url": Key(STRING, REQUIRED, check=absolute_url),
        "auth": Key(STRING, "backend_services", choices=SOURCE_AUTH_METHODS),
        "client_id": Key(STRING),
        "scopes": Key(STRING, "system/*.rs"),
        "signing_alg": Key(STRING, "RS384", choices=SIGNING_ALGS),
        "timeout": Key(NUMBER, 5.0, check=more_than(0, 120, " seconds")),
        "token_url": Key(STRING, check=absolute_url),  # else smart-configuration, else the CapabilityStatement
        # Facts this source may state about other organisations (app/access/facts.py); by default only its own.
        "trusted_for": Key(STRINGS, (), check=each_of(TRUSTED_FACTS)),
    },
    array=True,
    label=("id",),
)
STATE = Table(
    "state",
    {
        "redis_url": Key(STRING, "", check=redis_url),
        "key_prefix": Key(STRING, "scr:", check=not_empty),
    },
)
AUDIT = Table(
    "audit",
    {
        "database_url": Key(STRING, ""),
        "sqlite_path": Key(STRING, "../var/audit.sqlite3", check=not_empty),
        # Signed checkpoints of the chain head, outside the database (app/audit/checkpoints.py).
        "checkpoint_key_file": Key(STRING, ""),  # "": keys/audit-checkpoint.jwks.json beside the SQLite file
        "checkpoint_file": Key(STRING, ""),  # "": beside the SQLite file (docs/configuration.md)
        "checkpoint_every_events": Key(INTEGER, 100, check=at_least(1)),
        "checkpoint_every_minutes": Key(NUMBER, 5.0, check=more_than(0, 1440, " minutes")),
        "checkpoint_alerts": Key(BOOLEAN, False),
        # Identical refusals within this many seconds are counted into one summary (app/audit/refusals.py).
        "refusal_window_seconds": Key(INTEGER, 300, check=at_least(1)),
    },
)
ALERTS = Table(
    "alerts",
    {
        "webhook_urls": Key(STRINGS, ()),  # empty strings are dropped, the rest must be http(s) URLs
        "timeout": Key(NUMBER, 3.0, check=more_than(0, 120, " seconds")),
        "max_attempts": Key(INTEGER, 6, check=at_least(1)),
        "retry_seconds": Key(NUMBER, 5.0, check=at_least(0)),
    },
)
TRAINING = Table(
    "access.training",
    {"sds_user_id": Key(STRING, REQUIRED), "completed": Key(DATE, REQUIRED)},
    array=True,
    label=("sds_user_id",),
)
ACCESS = Table(
    "access",
    {
        k: Key(INTEGER if isinstance(v, int) else STRINGS, v, check=_ACCESS_CHECKS.get(k))
        for k, v in ACCESS_DEFAULTS.items()
    },
    tables=(TRAINING,),
)
# How much the viewer reads from the organisations (docs/configuration.md, [limits]; app/record/fetch.py).
LIMITS = Table(
    "limits",
    {
        "page_mb": Key(NUMBER, 16.0, check=more_than(0, 1024, " MB")),
        "resources_per_type": Key(INTEGER, 10_000, check=at_least(1)),
        "resources_per_patient": Key(INTEGER, 50_000, check=at_least(1)),
        "launch_mb": Key(NUMBER, 100.0, check=more_than(0, 4096, " MB")),
        "cache_mb": Key(NUMBER, 24.0, check=more_than(0, 65536, " MB")),
    },
)

# How long a browser session lasts (docs/configuration.md, [session]; core/state/session.py).
SESSION = Table(
    "session",
    {
        "idle_minutes": Key(INTEGER, 15, check=more_than(0, 720, " minutes")),
        "absolute_hours": Key(INTEGER, 8, check=more_than(0, 12, " hours")),
        "front_channel_logout": Key(BOOLEAN, True),
    },
)

SCHEMA: dict[str, Table] = {t.name: t for t in (VIEWER, EHR, SOURCE, STATE, AUDIT, ALERTS, ACCESS, LIMITS, SESSION)}
# Top-level tables that are not the viewer's: accepted, left to their owner (sandbox/settings.py).
FOREIGN_TABLES = ("sandbox",)


def accepted_keys(tables: Mapping[str, Table]) -> dict[str, set[str]]:
    """Every table (dotted name, nested ones included) → the keys it accepts (nested tables excluded)."""
    return {t.name: set(t.keys) for top in tables.values() for t in top.walk()}


def all_tables(tables: Mapping[str, Table]) -> dict[str, Table]:
    return {t.name: t for top in tables.values() for t in top.walk()}


ACCEPTED_KEYS: dict[str, set[str]] = accepted_keys(SCHEMA)


def check_table(value: Any, table: Table, file: str, within: str = "") -> Any:
    """Validate one table (a dict) or array of tables (a list of dicts) against its schema.

    Returns plain dicts with every key present: given values converted (lists of strings → tuples,
    numbers → float, dates → "YYYY-MM-DD"), missing ones set to their defaults.
    """
    suffix = f" (in {within})" if within else ""
    if table.array:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(e, dict) for e in value):
            raise ConfigError(f"{file}: {table.header}{suffix} must be an array of tables (write {table.header})")
        return [_check_entry(e, table, file, _entry_where(table, e, i) + suffix) for i, e in enumerate(value, 1)]
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ConfigError(f"{file}: {table.header}{suffix} must be a table")
    return _check_entry(value, table, file, table.header + suffix, within)


def _entry_where(table: Table, entry: Mapping[str, Any], index: int) -> str:
    label = next((entry[k] for k in table.label if isinstance(entry.get(k), str) and entry[k]), None)
    return f"{table.header} {label!r}" if label else f"{table.header} #{index}"


def _check_entry(d: Mapping[str, Any], table: Table, file: str, where: str, within: str = "") -> dict[str, Any]:
    nested = {t.key: t for t in table.tables}
    inner = where if table.array else within
    out: dict[str, Any] = {}
    for key, value in d.items():
        if key in table.keys:
            out[key] = _check_value(value, table.keys[key], key, file, where)
        elif key in nested:
            out[key] = check_table(value, nested[key], file, inner)
        else:
            known = [*table.keys, *nested]
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (accepted: {', '.join(known)})"
            raise ConfigError(f"{file}: {where} unknown key '{key}'{hint}")
    for key, spec in table.keys.items():
        if key not in out:
            if spec.default is REQUIRED:
                raise ConfigError(f"{file}: {where} '{key}' is required")
            out[key] = spec.default
    for key, sub in nested.items():
        if key not in out:
            out[key] = check_table(None, sub, file, inner)
    return out


def _check_value(value: Any, spec: Key, key: str, file: str, where: str) -> Any:
    def fail(problem: str) -> ConfigError:
        return ConfigError(f"{file}: {where} {key} {problem}")

    kind = spec.type
    if kind == STRING:
        if not isinstance(value, str):
            raise fail(_EXPECTED[kind])
        if spec.default is REQUIRED and not value:
            raise ConfigError(f"{file}: {where} '{key}' is required")
    elif kind == BOOLEAN:
        if not isinstance(value, bool):
            raise fail(_EXPECTED[kind])
    elif kind == INTEGER:
        if not isinstance(value, int) or isinstance(value, bool):
            raise fail(_EXPECTED[kind])
    elif kind == NUMBER:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise fail(_EXPECTED[kind])
        value = float(value)
    elif kind == STRINGS:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise fail(_EXPECTED[kind])
        value = tuple(value)
    elif kind == DATE:
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            value = value.isoformat()
        if not isinstance(value, str) or not _DATE.match(value):
            raise fail(_EXPECTED[kind])
        try:
            dt.date.fromisoformat(value)
        except ValueError:
            raise fail(f"is not a real date: {value!r}") from None
    elif kind == TABLE:
        if not isinstance(value, dict):
            raise fail(_EXPECTED[kind])
    else:  # pragma: no cover - a schema mistake
        raise AssertionError(f"unknown key type {kind}")
    if spec.choices and value not in spec.choices:
        raise fail(f"must be one of {', '.join(spec.choices)}")
    if spec.check and (problem := spec.check(value)):
        raise fail(problem)
    return value


# ---------------------------------------------------------------------------------------------------------
# The typed settings.


@dataclass(frozen=True)
class ViewerSettings:
    base_url: str
    keys_file: Path
    generate_dev_keys: bool
    secret_key: str | None
    metrics_token: str | None  # None: /metrics answers only direct loopback requests
    support_email: str
    support_phone: str


@dataclass(frozen=True)
class StateSettings:
    """Where sessions, OAuth state, launch contexts and tokens live: Redis when ``redis_url`` is set."""

    redis_url: str = ""  # "" → in-process memory (one process only)
    key_prefix: str = "scr:"  # every Redis key starts with it


@dataclass(frozen=True)
class AuditSettings:
    database_url: str | None = None
    sqlite_path: Path = field(default_factory=lambda: Path("var/audit.sqlite3").resolve())  # the file says where
    checkpoint_key_file: Path | None = None  # None: keys/audit-checkpoint.jwks.json beside the SQLite file
    checkpoint_file: Path | None = None  # None: beside the SQLite file (see checkpoint_path)
    checkpoint_every_events: int = 100
    checkpoint_every_minutes: float = 5.0
    checkpoint_alerts: bool = False
    refusal_window_seconds: int = 300

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the audit database: ``database_url``, else the SQLite file."""
        return self.database_url or f"sqlite:///{self.sqlite_path}"

    @property
    def checkpoint_key_path(self) -> Path:
        return self.checkpoint_key_file or self.sqlite_path.parent / "keys" / "audit-checkpoint.jwks.json"

    @property
    def checkpoint_path(self) -> Path:
        """``checkpoint_file``, else beside the SQLite file (with a database URL: named after its database)."""
        if self.checkpoint_file is not None:
            return self.checkpoint_file
        if self.database_url:
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", self.database_url.rsplit("/", 1)[-1].split("?")[0]) or "audit"
            return self.sqlite_path.with_name(f"audit-checkpoints-{name}.jsonl")
        return self.sqlite_path.with_name(f"{self.sqlite_path.name}.checkpoints.jsonl")


@dataclass(frozen=True)
class AlertSettings:
    webhook_urls: tuple[str, ...] = ()
    timeout: float = 3.0  # seconds per delivery attempt
    max_attempts: int = 6  # deliveries tried before an alert is left undelivered
    retry_seconds: float = 5.0  # wait before the first retry


@dataclass(frozen=True)
class TrainingAttestation:
    sds_user_id: str
    completed: str  # YYYY-MM-DD


@dataclass(frozen=True)
class AccessSettings:
    """The ``[access]`` rules (see app/access/policy.py): activity and role codes per capability."""

    view_summary: frozenset[str]
    view_detailed: frozenset[str]
    emergency_access: frozenset[str]
    legal_override: frozenset[str]
    sensitive_records: frozenset[str]
    privacy_officer_roles: frozenset[str]
    privacy_officer_activities: frozenset[str]
    admin_roles: frozenset[str]
    reason_codes: tuple[str, ...]  # in the order the reason form offers them
    break_glass_minutes: int
    break_glass_min_justification: int
    break_glass_min_words: int
    break_glass_min_letters: int
    encounter_recent_hours: int
    refresh_interval_seconds: int
    sensitive_labels: frozenset[str]
    sensitive_codes: frozenset[str]
    register_manager_roles: frozenset[str]  # besides privacy officers, who manage the access register
    register_default_days: int  # how long a new register entry lasts unless the manager says otherwise
    training: tuple[TrainingAttestation, ...] = ()

    @classmethod
    def from_config(cls, raw: Mapping[str, Any] | None, file: str = "[access]") -> AccessSettings:
        """An ``[access]`` table validated on its own (defaults for what it leaves out)."""
        return _access(check_table(dict(raw or {}), ACCESS, file))


MB = 1024 * 1024


@dataclass(frozen=True)
class LimitSettings:
    """The ``[limits]`` table: how much is read from the organisations (bytes and counts, not the file's MB).

    Defaults against the largest Synthea patient (2,178 entries, 1,432 Observations, 2.2 MB of JSON; a page
    of 1,000 Observations is about 0.75 MB): a page may be 20x that page, a list 7x that patient's longest,
    one organisation's record 23x that patient; one launch 45x, shared equally by its organisations (25 MB
    each of the sandbox's four). Parsed into Python, resources take about 4.6x their JSON size."""

    page_bytes: int = 16 * MB  # one answer (one page) from one organisation
    resources_per_type: int = 10_000  # one list (e.g. Observations) from one organisation
    resources_per_patient: int = 50_000  # every list from one organisation, for this patient
    launch_bytes: int = 100 * MB  # everything one launch receives, shared equally by its organisations
    cache_bytes: int = 24 * MB  # the per-launch record cache of one process (JSON size of what it keeps)


@dataclass(frozen=True)
class SessionSettings:
    """The ``[session]`` table: when a browser session ends by itself, and whether EHRs may end it."""

    idle_seconds: int = 15 * 60  # a session unused this long ends (shared clinical workstations)
    absolute_seconds: int = 8 * 3600  # no session lasts longer, however busy
    front_channel_logout: bool = True  # GET /logout/front-channel (OpenID Connect Front-Channel Logout 1.0)


@dataclass(frozen=True)
class Config:
    viewer: ViewerSettings
    ehrs: tuple[EhrRegistration, ...]
    sources: tuple[Source, ...]
    state: StateSettings
    audit: AuditSettings
    alerts: AlertSettings
    access: AccessSettings
    path: Path
    raw: Mapping[str, Any] = field(repr=False)
    session: SessionSettings = field(default_factory=SessionSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)

    def ehr_for_issuer(self, issuer: str) -> EhrRegistration | None:
        """Exact match only: ``iss`` comes from the query string and must be allow-listed (pitfall A8)."""
        return next((e for e in self.ehrs if e.issuer == issuer), None)

    def source(self, source_id: str) -> Source | None:
        return next((s for s in self.sources if s.id == source_id), None)


# ---------------------------------------------------------------------------------------------------------
# Loading.


def expand(value: Any, env: Mapping[str, str], where: str = "") -> Any:
    """Replace ``${NAME}`` / ``${NAME:-default}`` in every string of a parsed TOML tree."""
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env and env[name] != "":
                return env[name]
            if default is None:
                at = f"{where}: " if where else ""
                raise ConfigError(f"{at}environment variable {name} is not set and has no default")
            return default

        return _VAR.sub(sub, value)
    if isinstance(value, list):
        return [expand(v, env, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: expand(v, env, f"{where}.{k}" if where else k) for k, v in value.items()}
    return value


def display_path(path: Path) -> str:
    """The file as an operator would type it: relative to the working directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def read_toml(path: Path, env: Mapping[str, str]) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"configuration file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{display_path(path)}: not valid TOML: {exc}") from exc
    try:
        return expand(data, env)
    except ConfigError as exc:
        raise ConfigError(f"{display_path(path)}: {exc}") from None


def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Load and validate the configuration: ``path``, else ``$SCR_CONFIG``; neither is a ConfigError (there is
    no default file: development tools such as ``make run`` point SCR_CONFIG at the sandbox's)."""
    env = os.environ if env is None else env
    chosen = path or env.get("SCR_CONFIG")
    if not chosen:
        raise ConfigError(NO_CONFIG)
    path = Path(chosen).resolve()
    file = display_path(path)
    data = read_toml(path, env)
    for name, value in data.items():
        if name in SCHEMA or name in FOREIGN_TABLES:
            continue
        if not isinstance(value, dict | list):
            raise ConfigError(f"{file}: unknown top-level key '{name}' (every key belongs in a table)")
        known = {**{t.name: t.header for t in SCHEMA.values()}, **{t: f"[{t}]" for t in FOREIGN_TABLES}}
        close = difflib.get_close_matches(name, list(known), n=1)
        hint = f" (did you mean {known[close[0]]}?)" if close else f" (accepted: {', '.join(known.values())})"
        header = f"[[{name}]]" if isinstance(value, list) else f"[{name}]"
        raise ConfigError(f"{file}: unknown table {header}{hint}")
    v = {name: check_table(data.get(name), table, file) for name, table in SCHEMA.items()}
    sources = tuple(_source(s, file) for s in v["source"])
    ehrs = tuple(_ehr(e, env, file, sources) for e in v["ehr"])
    _unique(file, "ehr issuer", [e.issuer for e in ehrs])
    _unique(file, "source id", [s.id for s in sources])
    return Config(
        viewer=_viewer(v["viewer"], path.parent, env),
        ehrs=ehrs,
        sources=sources,
        state=_state(v["state"], env, file),
        audit=AuditSettings(
            database_url=v["audit"]["database_url"] or None,
            sqlite_path=resolve_path(path.parent, v["audit"]["sqlite_path"]),
            checkpoint_key_file=(
                resolve_path(path.parent, v["audit"]["checkpoint_key_file"])
                if v["audit"]["checkpoint_key_file"]
                else None
            ),
            checkpoint_file=(
                resolve_path(path.parent, v["audit"]["checkpoint_file"]) if v["audit"]["checkpoint_file"] else None
            ),
            checkpoint_every_events=v["audit"]["checkpoint_every_events"],
            checkpoint_every_minutes=v["audit"]["checkpoint_every_minutes"],
            checkpoint_alerts=v["audit"]["checkpoint_alerts"],
            refusal_window_seconds=v["audit"]["refusal_window_seconds"],
        ),
        alerts=_alerts(v["alerts"], file),
        access=_access(v["access"]),
        limits=_limits(v["limits"]),
        session=_session(v["session"], file),
        path=path,
        raw=data,
    )


def resolve_path(base_dir: Path, value: str) -> Path:
    """Relative paths in the file are relative to the file itself, not to the working directory."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base_dir / p).resolve()


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _viewer(d: Mapping[str, Any], base_dir: Path, env: Mapping[str, str]) -> ViewerSettings:
    return ViewerSettings(
        base_url=d["base_url"].rstrip("/"),
        keys_file=resolve_path(base_dir, d["keys_file"]),
        generate_dev_keys=d["generate_dev_keys"],
        secret_key=env.get(d["secret_key_env"]) or None,
        metrics_token=env.get(d["metrics_token_env"]) or None,
        support_email=d["support_email"],
        support_phone=d["support_phone"],
    )


def _ehr(d: Mapping[str, Any], env: Mapping[str, str], file: str, sources: tuple[Source, ...]) -> EhrRegistration:
    issuer = d["issuer"].rstrip("/")
    where = f"{file}: [[ehr]] {d['name'] or issuer!r}"
    bound = _bound_source(d, issuer, sources, where)
    secret = None
    if d["client_auth"] == "client_secret_basic":
        secret = env.get(d["client_secret_env"]) if d["client_secret_env"] else None
        if not secret:
            raise ConfigError(f"{where} client_secret_basic needs client_secret_env naming a set variable")
    return EhrRegistration(
        name=d["name"] or issuer,
        issuer=issuer,
        client_id=d["client_id"],
        client_auth=d["client_auth"],
        signing_alg=d["signing_alg"],
        client_secret=secret,
        standalone=d["standalone"],
        frame_origins=d["frame_origins"] if d["frame_origins"] is not None else (origin_of(issuer),),
        id_token_issuer=d["id_token_issuer"],
        identity=_identity_policy(d, bound, where),
        source=bound.id if bound else None,
        read_with=d["read_with"],
        ods_code=bound.ods_code if bound else d["ods_code"],
        kind=bound.kind if bound else d["kind"],
        timeout=bound.timeout if bound else d["timeout"],
    )


def _bound_source(d: Mapping[str, Any], issuer: str, sources: tuple[Source, ...], where: str) -> Source | None:
    """The [[source]] an EHR belongs to: named by ``source``, or the one whose FHIR base is the EHR's issuer.
    An EHR that belongs to none must say which organisation it is (its data is read as that organisation)."""
    if d["source"]:
        bound = next((s for s in sources if s.id == d["source"]), None)
        if bound is None:
            known = ", ".join(s.id for s in sources) or "none"
            raise ConfigError(f"{where} source {d['source']!r} is not a [[source]] id (known: {known})")
    else:
        bound = next((s for s in sources if s.base_url == issuer), None)
        if bound is None and d["ods_code"]:
            bound = next((s for s in sources if s.ods_code == d["ods_code"]), None)  # one organisation, read once
    if d["read_with"] == BACKEND_SERVICES and (bound is None or bound.auth != BACKEND_SERVICES):
        raise ConfigError(f"{where} read_with = 'backend_services' needs `source` naming a backend_services [[source]]")
    if bound is None and not (d["ods_code"] and d["kind"]):
        raise ConfigError(
            f"{where} belongs to no [[source]]: set `source` to the organisation it belongs to, "
            "or give its own `ods_code` and `kind`"
        )
    return bound


def _identity_policy(d: Mapping[str, Any], bound: Source | None, where: str) -> IdentityPolicy:
    order, activities, role = tuple(d["identity_sources"]), tuple(d["default_activity_codes"]), d["default_role_code"]
    if not order:
        raise ConfigError(f"{where} identity_sources must list at least one identity source")
    default = None
    if EHR_DEFAULT in order:
        if not activities:
            raise ConfigError(f"{where} identity_sources lists 'ehr_default' but default_activity_codes is empty")
        default = RoleGrant((role,) if role else (), activities, EHR_DEFAULT)
    elif activities or role:
        raise ConfigError(
            f"{where} default_role_code/default_activity_codes are set but identity_sources does not list "
            "'ehr_default' (add it where it should be tried, usually last)"
        )
    organisation = Organisation(bound.ods_code, bound.name) if bound else None
    if organisation is None and d["ods_code"]:
        organisation = Organisation(d["ods_code"], d["name"] or None)
    return IdentityPolicy(order=order, default_grant=default, organisation=organisation)


@dataclass(frozen=True)
class SourceSettings(Source):
    """A ``[[source]]``: launch's Backend Services server, and what the viewer trusts it to say about others."""

    trusted_for: frozenset[str] = frozenset()  # of TRUSTED_FACTS


def _source(d: Mapping[str, Any], file: str) -> Source:
    if d["auth"] == "backend_services" and not d["client_id"]:
        raise ConfigError(f"{file}: [[source]] {d['id']!r} backend_services needs a client_id")
    if d["auth"] != "backend_services" and d["token_url"]:
        raise ConfigError(f"{file}: [[source]] {d['id']!r} token_url is set but auth is {d['auth']!r} (no token)")
    return SourceSettings(
        id=d["id"],
        name=d["name"],
        ods_code=d["ods_code"],
        kind=d["kind"],
        base_url=d["base_url"].rstrip("/"),
        auth=d["auth"],
        client_id=d["client_id"],
        scopes=d["scopes"],
        signing_alg=d["signing_alg"],
        timeout=d["timeout"],
        token_url=d["token_url"],
        trusted_for=frozenset(d["trusted_for"]),
    )


def _state(d: Mapping[str, Any], env: Mapping[str, str], file: str) -> StateSettings:
    """``REDIS_URL`` and ``SCR_REDIS_PREFIX`` in the environment win over the file."""
    url = env.get("REDIS_URL") or d["redis_url"]
    if problem := redis_url(url):
        raise ConfigError(f"{file}: [state] redis_url (or REDIS_URL) {problem}")
    return StateSettings(redis_url=url, key_prefix=env.get("SCR_REDIS_PREFIX") or d["key_prefix"])


def _alerts(d: Mapping[str, Any], file: str) -> AlertSettings:
    urls = tuple(u for u in d["webhook_urls"] if u)
    if problem := absolute_url(urls):
        raise ConfigError(f"{file}: [alerts] webhook_urls {problem}")
    return AlertSettings(
        webhook_urls=urls, timeout=d["timeout"], max_attempts=d["max_attempts"], retry_seconds=d["retry_seconds"]
    )


def _limits(d: Mapping[str, Any]) -> LimitSettings:
    return LimitSettings(
        page_bytes=int(d["page_mb"] * MB),
        resources_per_type=d["resources_per_type"],
        resources_per_patient=d["resources_per_patient"],
        launch_bytes=int(d["launch_mb"] * MB),
        cache_bytes=int(d["cache_mb"] * MB),
    )


def _session(d: Mapping[str, Any], file: str) -> SessionSettings:
    if d["idle_minutes"] > d["absolute_hours"] * 60:
        raise ConfigError(f"{file}: [session] idle_minutes must not be longer than absolute_hours")
    return SessionSettings(
        idle_seconds=d["idle_minutes"] * 60,
        absolute_seconds=d["absolute_hours"] * 3600,
        front_channel_logout=d["front_channel_logout"],
    )


def _access(d: Mapping[str, Any]) -> AccessSettings:
    values = {k: d[k] if k == "reason_codes" or isinstance(d[k], int) else frozenset(d[k]) for k in ACCESS_DEFAULTS}
    training = tuple(TrainingAttestation(t["sds_user_id"], t["completed"]) for t in d["training"])
    return AccessSettings(**values, training=training)


def _unique(file: str, what: str, values: list[str]) -> None:
    dupes = {v for v in values if values.count(v) > 1}
    if dupes:
        raise ConfigError(f"{file}: duplicate {what}: {', '.join(sorted(dupes))}")
