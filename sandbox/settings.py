"""The ``[sandbox]`` part of the configuration: organisations served, registered clients, token lifetimes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.config import (
    CLIENT_AUTH_METHODS,
    INTEGER,
    REQUIRED,
    SOURCE_KINDS,
    STRING,
    STRINGS,
    TABLE,
    Config,
    ConfigError,
    Key,
    Table,
    absolute_url,
    accepted_keys,
    at_least,
    check_table,
    display_path,
    resolve_path,
)

from .keys import ID_TOKEN_ALGS

FAULT_MODES = ("ok", "down", "error_500", "malformed_json", "foreign_next", "paging_loop")
# What an organisation's FHIR server does in each fault mode, as the inspector says it ("… FHIR server: now …").
FAULT_MODE_NOTES = {
    "ok": "answers normally",
    "down": "drops every connection, as if the server were down",
    "error_500": "answers 500 (internal server error) to every request",
    "malformed_json": "sends truncated, invalid JSON for everything but /metadata and the SMART configuration",
    "foreign_next": "puts its next-page links on another host, which must not get the access token",
    "paging_loop": "links every search page to itself as the next page, for ever",
}
GRANT_TYPES = ("authorization_code", "refresh_token", "client_credentials")
# How an organisation's EHR and the authorisation server behave for its issuer: "nhs" (CIS2-style claims, strict
# PKCE, kid, the NHS-flavoured sandbox) or "generic" (what common deployed SMART servers do).
SMART_MODES = ("nhs", "generic")
SMART_MODE_NOTES = {
    "nhs": "CIS2-style id_token claims (nhsid_useruid, nhsid_nrbac_roles…), kid, PKCE S256 required, "
    "single-use codes, configured URLs",
    "generic": "standard id_token claims only (fhirUser Practitioner/<id>, no name), no kid, one-key JWKS, "
    "PKCE optional, reusable codes, refresh id_token without aud, client_secret_post advertised but refused, "
    "discovery URLs from the Host header; Practitioners without SDS/ODS identifiers",
}
# What the organisation's FHIR base advertises: the full smart-configuration, a Backend-Services-only one (no
# authorization_endpoint), or nothing at .well-known (404) with the endpoints in the CapabilityStatement only.
DISCOVERY_MODES = ("full", "token_endpoint_only", "capability_statement_only")
DISCOVERY_NOTES = {
    "full": "/.well-known/smart-configuration with every endpoint",
    "token_endpoint_only": "smart-configuration for Backend Services only: token_endpoint, no authorization_endpoint",
    "capability_statement_only": "/.well-known/smart-configuration answers 404; endpoints in /metadata only",
}
MAX_LATENCY_MS = 120_000


def _grant_types(values: tuple[str, ...]) -> str | None:
    wrong = [v for v in values if v not in GRANT_TYPES]
    return f"must be among {', '.join(GRANT_TYPES)}, got {', '.join(wrong)}" if wrong else None


# The [sandbox] tables, validated with the viewer's machinery (app.config.check_table): unknown keys, wrong
# types and missing required keys are errors naming the file, the table and the key.
FAULTS = Table(
    "sandbox.organisation.faults",
    {
        "latency_ms": Key(
            INTEGER,
            0,
            check=lambda v: None if 0 <= v <= MAX_LATENCY_MS else f"must be from 0 to {MAX_LATENCY_MS} milliseconds",
        ),
        "mode": Key(STRING, "ok", choices=FAULT_MODES),
    },
)
ORGANISATION = Table(
    "sandbox.organisation",
    {
        "id": Key(STRING, REQUIRED),
        "name": Key(STRING, REQUIRED),
        "ods_code": Key(STRING, REQUIRED),
        "kind": Key(STRING, "gp", choices=SOURCE_KINDS),
        "smart_mode": Key(STRING, "nhs", choices=SMART_MODES),
        "discovery": Key(STRING, "full", choices=DISCOVERY_MODES),
    },
    array=True,
    label=("id",),
    tables=(FAULTS,),
)
CLIENT = Table(
    "sandbox.client",
    {
        "client_id": Key(STRING, REQUIRED),
        "name": Key(STRING),  # default: the client_id
        "auth_method": Key(STRING, "private_key_jwt", choices=CLIENT_AUTH_METHODS),
        "grant_types": Key(STRINGS, ("authorization_code",), check=_grant_types),
        "scope": Key(STRING, ""),
        "redirect_uris": Key(STRINGS, (), check=absolute_url),
        "launch_uris": Key(STRINGS, (), check=absolute_url),
        "jwks_file": Key(STRING),
        "jwks_uri": Key(STRING, check=absolute_url),
        "jwks": Key(TABLE),
        "client_secret": Key(STRING),
        "id_token_alg": Key(STRING, "RS256", choices=ID_TOKEN_ALGS),
    },
    array=True,
    label=("client_id",),
)
SANDBOX = Table(
    "sandbox",
    {
        "base_url": Key(STRING, REQUIRED, check=absolute_url),
        "synthea_dir": Key(STRING, ""),
        "access_token_lifetime": Key(INTEGER, 3600, check=at_least(1)),
        "id_token_lifetime": Key(INTEGER, 300, check=at_least(1)),
        "launch_url": Key(STRING, check=absolute_url),  # default: the viewer's base_url + /launch
        # OpenID Connect Front-Channel Logout: loaded (with ?iss=) by the EHR's sign-out page. Default: none.
        "front_channel_logout_url": Key(STRING, check=absolute_url),
    },
    tables=(CLIENT, ORGANISATION),
)
ACCEPTED_KEYS: dict[str, set[str]] = accepted_keys({"sandbox": SANDBOX})


@dataclass
class Faults:
    """What an organisation's FHIR server does wrong, switchable at run time."""

    latency_ms: int = 0
    mode: str = "ok"

    def __post_init__(self) -> None:
        validate_faults(self.latency_ms, self.mode)


def validate_faults(latency_ms: Any, mode: Any) -> None:
    if not isinstance(latency_ms, int) or isinstance(latency_ms, bool) or not 0 <= latency_ms <= MAX_LATENCY_MS:
        raise ValueError(f"latency_ms must be a whole number of milliseconds from 0 to {MAX_LATENCY_MS}")
    if mode not in FAULT_MODES:
        raise ValueError(f"mode must be one of {', '.join(FAULT_MODES)}")


@dataclass(frozen=True)
class SmartProfile:
    """How an organisation's issuer behaves (``smart_mode``) and what its FHIR base advertises (``discovery``)."""

    smart_mode: str = "nhs"
    discovery: str = "full"

    def __post_init__(self) -> None:
        validate_smart_profile(self.smart_mode, self.discovery)

    @property
    def generic(self) -> bool:
        return self.smart_mode == "generic"


def validate_smart_profile(smart_mode: Any, discovery: Any) -> None:
    if smart_mode not in SMART_MODES:
        raise ValueError(f"smart_mode must be one of {', '.join(SMART_MODES)}")
    if discovery not in DISCOVERY_MODES:
        raise ValueError(f"discovery must be one of {', '.join(DISCOVERY_MODES)}")


@dataclass(frozen=True)
class Organisation:
    id: str
    name: str
    ods_code: str
    kind: str
    faults: Faults
    smart: SmartProfile = field(default_factory=SmartProfile)


@dataclass(frozen=True)
class ClientRegistration:
    client_id: str
    name: str
    auth_method: str
    grant_types: tuple[str, ...]
    scope: str
    redirect_uris: tuple[str, ...] = ()
    launch_uris: tuple[str, ...] = ()
    jwks_file: Path | None = None
    jwks_uri: str | None = None
    jwks: dict | None = None
    client_secret: str | None = None
    id_token_alg: str = "RS256"  # noqa: S105 (an algorithm name)


@dataclass(frozen=True)
class SandboxSettings:
    base_url: str
    synthea_dir: Path | None
    access_token_lifetime: int
    id_token_lifetime: int
    launch_url: str
    organisations: tuple[Organisation, ...]
    clients: tuple[ClientRegistration, ...]
    fixtures_dir: Path = field(default=Path(__file__).resolve().parent / "fixtures" / "uk")
    front_channel_logout_url: str | None = None  # the viewer's, loaded by the EHR's sign-out page

    @property
    def issuer(self) -> str:
        """The authorisation server's issuer (id_tokens' ``iss``)."""
        return f"{self.base_url}/auth"

    def fhir_base(self, org_id: str) -> str:
        return f"{self.base_url}/fhir/{org_id}"

    def organisation(self, org_id: str) -> Organisation | None:
        return next((o for o in self.organisations if o.id == org_id), None)


def sandbox_settings(config: Config) -> SandboxSettings:
    d = config.raw.get("sandbox")
    file = display_path(config.path)
    if not isinstance(d, dict) or "base_url" not in d:
        raise ConfigError(f"{file}: the [sandbox] table with base_url is required to run the sandbox")
    v = check_table(d, SANDBOX, file)
    base_dir = config.path.parent
    orgs = tuple(_organisation(o, file) for o in v["organisation"])
    if not orgs:
        raise ConfigError(f"{file}: [sandbox] at least one [[sandbox.organisation]] is required")
    return SandboxSettings(
        base_url=v["base_url"].rstrip("/"),
        synthea_dir=resolve_path(base_dir, v["synthea_dir"]) if v["synthea_dir"] else None,
        access_token_lifetime=v["access_token_lifetime"],
        id_token_lifetime=v["id_token_lifetime"],
        launch_url=v["launch_url"] or f"{config.viewer.base_url}/launch",
        organisations=orgs,
        clients=tuple(_client(c, base_dir) for c in v["client"]),
        front_channel_logout_url=v["front_channel_logout_url"],
    )


def _organisation(d: dict[str, Any], file: str) -> Organisation:
    faults = d["faults"]
    try:
        return Organisation(
            id=d["id"],
            name=d["name"],
            ods_code=d["ods_code"],
            kind=d["kind"],
            faults=Faults(latency_ms=faults["latency_ms"], mode=faults["mode"]),
            smart=SmartProfile(smart_mode=d["smart_mode"], discovery=d["discovery"]),
        )
    except ValueError as exc:
        raise ConfigError(f"{file}: [[sandbox.organisation]] {d['id']!r} faults: {exc}") from exc


def _client(d: dict[str, Any], base_dir: Path) -> ClientRegistration:
    return ClientRegistration(
        client_id=d["client_id"],
        name=d["name"] or d["client_id"],
        auth_method=d["auth_method"],
        grant_types=d["grant_types"],
        scope=d["scope"],
        redirect_uris=d["redirect_uris"],
        launch_uris=d["launch_uris"],
        jwks_file=resolve_path(base_dir, d["jwks_file"]) if d["jwks_file"] else None,
        jwks_uri=d["jwks_uri"],
        jwks=d["jwks"],
        client_secret=d["client_secret"],
        id_token_alg=d["id_token_alg"],
    )
