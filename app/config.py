"""Typed settings loaded from one TOML file (``SCR_CONFIG``) plus environment variables.

The TOML file describes *what* the viewer talks to (registered host EHRs, the organisations' FHIR
sources); environment variables carry secrets and service URLs. Any string in the file may refer to
the environment as ``${NAME}`` or ``${NAME:-default}``, so one file serves a laptop, CI (random ports)
and production without edits.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from launch.registration import EhrRegistration, Source

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "sandbox" / "config.toml"
CLIENT_AUTH_METHODS = ("private_key_jwt", "client_secret_basic", "none")
SOURCE_AUTH_METHODS = ("backend_services", "none")
SOURCE_KINDS = ("gp", "acute", "community", "mental_health", "community_mental_health", "social_care")
SIGNING_ALGS = ("RS384", "ES384")

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """The configuration file is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class ViewerSettings:
    base_url: str
    keys_file: Path
    generate_dev_keys: bool
    secret_key: str | None
    support_email: str
    support_phone: str


@dataclass(frozen=True)
class Config:
    viewer: ViewerSettings
    ehrs: tuple[EhrRegistration, ...]
    sources: tuple[Source, ...]
    path: Path
    raw: Mapping[str, Any] = field(repr=False)

    def ehr_for_issuer(self, issuer: str) -> EhrRegistration | None:
        """Exact match only: ``iss`` comes from the query string and must be allow-listed (pitfall A8)."""
        return next((e for e in self.ehrs if e.issuer == issuer), None)

    def source(self, source_id: str) -> Source | None:
        return next((s for s in self.sources if s.id == source_id), None)


def expand(value: Any, env: Mapping[str, str]) -> Any:
    """Replace ``${NAME}`` / ``${NAME:-default}`` in every string of a parsed TOML tree."""
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env and env[name] != "":
                return env[name]
            if default is None:
                raise ConfigError(f"environment variable {name} is not set and has no default")
            return default

        return _VAR.sub(sub, value)
    if isinstance(value, list):
        return [expand(v, env) for v in value]
    if isinstance(value, dict):
        return {k: expand(v, env) for k, v in value.items()}
    return value


def read_toml(path: Path, env: Mapping[str, str]) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"configuration file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return expand(data, env)


def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Load and validate the configuration; ``path`` defaults to ``$SCR_CONFIG`` then the sandbox's."""
    env = os.environ if env is None else env
    path = Path(path or env.get("SCR_CONFIG") or DEFAULT_CONFIG).resolve()
    data = read_toml(path, env)
    viewer = _viewer(data.get("viewer", {}), path.parent, env)
    ehrs = tuple(_ehr(e, env) for e in data.get("ehr", []))
    sources = tuple(_source(s) for s in data.get("source", []))
    _unique("ehr issuer", [e.issuer for e in ehrs])
    _unique("source id", [s.id for s in sources])
    return Config(viewer=viewer, ehrs=ehrs, sources=sources, path=path, raw=data)


def resolve_path(base_dir: Path, value: str) -> Path:
    """Relative paths in the file are relative to the file itself, not to the working directory."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else (base_dir / p).resolve()


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _viewer(d: Mapping[str, Any], base_dir: Path, env: Mapping[str, str]) -> ViewerSettings:
    base_url = _url(d, "base_url", "viewer")
    return ViewerSettings(
        base_url=base_url.rstrip("/"),
        keys_file=resolve_path(base_dir, d.get("keys_file", "../var/keys/viewer.jwks.json")),
        generate_dev_keys=bool(d.get("generate_dev_keys", False)),
        secret_key=env.get(d.get("secret_key_env", "SCR_SECRET_KEY")) or None,
        support_email=d.get("support_email", ""),
        support_phone=d.get("support_phone", ""),
    )


def _ehr(d: Mapping[str, Any], env: Mapping[str, str]) -> EhrRegistration:
    where = f"[[ehr]] {d.get('name', d.get('issuer', '?'))}"
    auth = d.get("client_auth", "private_key_jwt")
    if auth not in CLIENT_AUTH_METHODS:
        raise ConfigError(f"{where}: client_auth must be one of {', '.join(CLIENT_AUTH_METHODS)}")
    alg = d.get("signing_alg", "RS384")
    if alg not in SIGNING_ALGS:
        raise ConfigError(f"{where}: signing_alg must be one of {', '.join(SIGNING_ALGS)}")
    secret = None
    if auth == "client_secret_basic":
        secret_env = d.get("client_secret_env")
        secret = env.get(secret_env) if secret_env else None
        if not secret:
            raise ConfigError(f"{where}: client_secret_basic needs client_secret_env naming a set variable")
    issuer = _url(d, "issuer", where).rstrip("/")
    frames = tuple(d.get("frame_origins", [origin_of(issuer)]))
    return EhrRegistration(
        name=d.get("name", issuer),
        issuer=issuer,
        client_id=_required(d, "client_id", where),
        client_auth=auth,
        signing_alg=alg,
        client_secret=secret,
        standalone=bool(d.get("standalone", False)),
        frame_origins=frames,
        id_token_issuer=d.get("id_token_issuer"),
    )


def _source(d: Mapping[str, Any]) -> Source:
    where = f"[[source]] {d.get('id', '?')}"
    kind = _required(d, "kind", where)
    if kind not in SOURCE_KINDS:
        raise ConfigError(f"{where}: kind must be one of {', '.join(SOURCE_KINDS)}")
    auth = d.get("auth", "backend_services")
    if auth not in SOURCE_AUTH_METHODS:
        raise ConfigError(f"{where}: auth must be one of {', '.join(SOURCE_AUTH_METHODS)}")
    if auth == "backend_services" and not d.get("client_id"):
        raise ConfigError(f"{where}: backend_services needs a client_id")
    timeout = float(d.get("timeout", 5.0))
    if not 0 < timeout <= 120:
        raise ConfigError(f"{where}: timeout must be between 0 and 120 seconds")
    return Source(
        id=_required(d, "id", where),
        name=_required(d, "name", where),
        ods_code=_required(d, "ods_code", where),
        kind=kind,
        base_url=_url(d, "base_url", where).rstrip("/"),
        auth=auth,
        client_id=d.get("client_id"),
        scopes=d.get("scopes", "system/*.rs"),
        signing_alg=d.get("signing_alg", "RS384"),
        timeout=timeout,
    )


def _required(d: Mapping[str, Any], key: str, where: str) -> str:
    value = d.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: '{key}' is required")
    return value


def _url(d: Mapping[str, Any], key: str, where: str) -> str:
    value = _required(d, key, where)
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{where}: '{key}' must be an absolute http(s) URL, got {value!r}")
    return value


def _unique(what: str, values: list[str]) -> None:
    dupes = {v for v in values if values.count(v) > 1}
    if dupes:
        raise ConfigError(f"duplicate {what}: {', '.join(sorted(dupes))}")
