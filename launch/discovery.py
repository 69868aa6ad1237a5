"""SMART discovery (``{iss}/.well-known/smart-configuration``) and JWKS, cached with a time to live.

Only ever called for an issuer or source that is already configured, so a hostile ``iss`` causes no request.
An EHR launch needs an ``authorization_endpoint``; Backend Services needs only a token endpoint, found (in
this order) from the source's explicit ``token_url``, its smart-configuration's ``token_endpoint``, or the
SMART ``oauth-uris`` extension of its CapabilityStatement (``{base}/metadata``), as the SMART spec allows.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import orjson
from cachetools import TTLCache
from joserfc.jwk import KeySet

from core.http import OutboundError, http_get

from .errors import DiscoveryFailed, DiscoveryUnreachable

DISCOVERY_TTL = 3600
JWKS_TTL = 3600
JWKS_MIN_REFETCH = 30  # an unknown kid triggers a refetch, at most this often per issuer
TIMEOUT = 5.0
MAX_BYTES = 1024 * 1024  # a smart-configuration or JWKS document is a few KB
CACHE_SIZE = 256  # issuers and key sets: only allow-listed ones are ever fetched
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


@dataclass(frozen=True)
class SmartConfiguration:
    fhir_base: str
    authorization_endpoint: str | None  # absent at Backend-Services-only servers
    token_endpoint: str
    issuer: str | None
    jwks_uri: str | None
    capabilities: tuple[str, ...]
    code_challenge_methods: tuple[str, ...]
    raw: dict = field(repr=False, compare=False)


def _check_url(url: object, what: str) -> str:
    if not isinstance(url, str):
        raise DiscoveryFailed(f"smart-configuration lacks {what}")
    parts = urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in LOOPBACK):
        return url
    raise DiscoveryFailed(f"{what} must be https (http only on loopback): {url!r}")


def parse_smart_configuration(fhir_base: str, doc: object) -> SmartConfiguration:
    if not isinstance(doc, dict):
        raise DiscoveryFailed("smart-configuration is not a JSON object")
    methods = tuple(doc.get("code_challenge_methods_supported") or ())
    if methods and "S256" not in methods:
        raise DiscoveryFailed(f"server does not support PKCE S256 (offers {methods})")
    return SmartConfiguration(
        fhir_base=fhir_base,
        authorization_endpoint=(
            _check_url(doc["authorization_endpoint"], "authorization_endpoint")
            if doc.get("authorization_endpoint") is not None
            else None
        ),
        token_endpoint=_check_url(doc.get("token_endpoint"), "token_endpoint"),
        issuer=doc.get("issuer") if isinstance(doc.get("issuer"), str) else None,
        jwks_uri=_check_url(doc["jwks_uri"], "jwks_uri") if doc.get("jwks_uri") else None,
        capabilities=tuple(doc.get("capabilities") or ()),
        code_challenge_methods=methods,
        raw=doc,
    )


OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


def token_endpoint_from_capabilities(doc: object) -> str:
    """The ``token`` URI of the SMART oauth-uris extension on a CapabilityStatement's REST security."""
    if not isinstance(doc, dict) or doc.get("resourceType") != "CapabilityStatement":
        raise DiscoveryFailed("/metadata is not a CapabilityStatement")
    for rest in doc.get("rest") or []:
        security = (rest or {}).get("security") or {} if isinstance(rest, dict) else {}
        for ext in security.get("extension") or []:
            if not isinstance(ext, dict) or ext.get("url") != OAUTH_URIS:
                continue
            for sub in ext.get("extension") or []:
                if isinstance(sub, dict) and sub.get("url") == "token":
                    return _check_url(sub.get("valueUri"), "the CapabilityStatement's token URI")
    raise DiscoveryFailed("the CapabilityStatement has no SMART oauth-uris token extension")


class Discovery:
    """Per-process cache of smart-configuration documents and JWKS, each with a TTL (pitfall A6)."""

    def __init__(self, ttl: int = DISCOVERY_TTL, jwks_ttl: int = JWKS_TTL) -> None:
        self.ttl, self.jwks_ttl = ttl, jwks_ttl
        self._configs: TTLCache[str, SmartConfiguration] = TTLCache(CACHE_SIZE, ttl)
        self._jwks: TTLCache[str, tuple[float, KeySet]] = TTLCache(CACHE_SIZE, jwks_ttl)  # (fetched at, keys)
        self._token_urls: TTLCache[str, str] = TTLCache(CACHE_SIZE, ttl)  # from CapabilityStatements
        self._lock = threading.Lock()  # TTLCache is not thread-safe

    def configuration(self, fhir_base: str) -> SmartConfiguration:
        with self._lock:
            cached = self._configs.get(fhir_base)
        if cached is not None:
            return cached
        url = f"{fhir_base.rstrip('/')}/.well-known/smart-configuration"
        config = parse_smart_configuration(fhir_base, _get_json(url))
        with self._lock:
            self._configs[fhir_base] = config
        return config

    def token_endpoint(self, fhir_base: str, token_url: str | None = None) -> str:
        """Where a Backend Services client asks for tokens (see the module docstring for the order)."""
        if token_url:
            return _check_url(token_url, "token_url")
        try:
            return self.configuration(fhir_base).token_endpoint
        except DiscoveryFailed as first:
            with self._lock:
                cached = self._token_urls.get(fhir_base)
            if cached:
                return cached
            try:
                found = token_endpoint_from_capabilities(_get_json(f"{fhir_base.rstrip('/')}/metadata"))
            except DiscoveryFailed as second:
                both_silent = isinstance(first, DiscoveryUnreachable) and isinstance(second, DiscoveryUnreachable)
                failure = DiscoveryUnreachable if both_silent else DiscoveryFailed
                raise failure(f"no token endpoint: {first}; and from /metadata: {second}") from second
            with self._lock:
                self._token_urls[fhir_base] = found
            return found

    def jwks(self, jwks_uri: str, refresh: bool = False) -> KeySet:
        """The issuer's keys; ``refresh`` refetches (rate-limited) when a token names an unknown kid."""
        with self._lock:
            cached = self._jwks.get(jwks_uri)
        if cached is not None and not (refresh and time.monotonic() - cached[0] >= JWKS_MIN_REFETCH):
            return cached[1]
        fetched_at = time.monotonic()
        doc = _get_json(jwks_uri)
        try:
            keyset = KeySet.import_key_set(doc)
        except Exception as exc:  # noqa: BLE001 - any malformed JWKS is the same failure to us
            raise DiscoveryFailed(f"JWKS at {jwks_uri} is not a valid key set: {exc}") from exc
        with self._lock:
            self._jwks[jwks_uri] = (fetched_at, keyset)
        return keyset

    def clear(self) -> None:
        with self._lock:
            self._configs.clear()
            self._jwks.clear()
            self._token_urls.clear()


def _get_json(url: str) -> object:
    try:
        resp = http_get(url, headers={"Accept": "application/json"}, timeout=TIMEOUT, max_bytes=MAX_BYTES)
    except OutboundError as exc:
        raise DiscoveryUnreachable(str(exc)) from exc
    if resp.status != 200:
        raise DiscoveryFailed(f"GET {url} answered {resp.status}")
    try:
        return orjson.loads(resp.body)
    except orjson.JSONDecodeError as exc:
        raise DiscoveryFailed(f"GET {url} did not return JSON") from exc
