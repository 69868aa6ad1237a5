"""The ``[sandbox]`` part of the configuration: organisations served, registered clients, token lifetimes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.config import Config, ConfigError, resolve_path

FAULT_MODES = ("ok", "down", "error_500", "malformed_json", "foreign_next", "paging_loop")


@dataclass
class Faults:
    """What an organisation's FHIR server does wrong, switchable at run time."""

    latency_ms: int = 0
    mode: str = "ok"

    def __post_init__(self) -> None:
        validate_faults(self.latency_ms, self.mode)


def validate_faults(latency_ms: Any, mode: Any) -> None:
    if not isinstance(latency_ms, int) or isinstance(latency_ms, bool) or not 0 <= latency_ms <= 120_000:
        raise ValueError("latency_ms must be a whole number of milliseconds from 0 to 120000")
    if mode not in FAULT_MODES:
        raise ValueError(f"mode must be one of {', '.join(FAULT_MODES)}")


@dataclass(frozen=True)
class Organisation:
    id: str
    name: str
    ods_code: str
    kind: str
    faults: Faults


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
    if not isinstance(d, dict) or "base_url" not in d:
        raise ConfigError(f"{config.path}: the [sandbox] table with base_url is required to run the sandbox")
    base_dir = config.path.parent
    synthea = d.get("synthea_dir")
    orgs = tuple(_organisation(o) for o in d.get("organisation", []))
    if not orgs:
        raise ConfigError("[sandbox]: at least one [[sandbox.organisation]] is required")
    return SandboxSettings(
        base_url=d["base_url"].rstrip("/"),
        synthea_dir=resolve_path(base_dir, synthea) if synthea else None,
        access_token_lifetime=int(d.get("access_token_lifetime", 3600)),
        id_token_lifetime=int(d.get("id_token_lifetime", 300)),
        launch_url=d.get("launch_url", f"{config.viewer.base_url}/launch"),
        organisations=orgs,
        clients=tuple(_client(c, base_dir) for c in d.get("client", [])),
    )


def _organisation(d: dict[str, Any]) -> Organisation:
    faults = d.get("faults", {})
    try:
        return Organisation(
            id=d["id"],
            name=d["name"],
            ods_code=d["ods_code"],
            kind=d.get("kind", "gp"),
            faults=Faults(latency_ms=int(faults.get("latency_ms", 0)), mode=faults.get("mode", "ok")),
        )
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"[[sandbox.organisation]] {d.get('id', '?')}: {exc}") from exc


def _client(d: dict[str, Any], base_dir: Path) -> ClientRegistration:
    method = d.get("auth_method", "private_key_jwt")
    if method not in ("private_key_jwt", "client_secret_basic", "none"):
        raise ConfigError(f"[[sandbox.client]] {d.get('client_id')}: unknown auth_method {method}")
    jwks_file = resolve_path(base_dir, d["jwks_file"]) if d.get("jwks_file") else None
    return ClientRegistration(
        client_id=d["client_id"],
        name=d.get("name", d["client_id"]),
        auth_method=method,
        grant_types=tuple(d.get("grant_types", ["authorization_code"])),
        scope=d.get("scope", ""),
        redirect_uris=tuple(d.get("redirect_uris", [])),
        launch_uris=tuple(d.get("launch_uris", [])),
        jwks_file=jwks_file,
        jwks_uri=d.get("jwks_uri"),
        jwks=d.get("jwks"),
        client_secret=d.get("client_secret"),
        id_token_alg=d.get("id_token_alg", "RS256"),
    )
