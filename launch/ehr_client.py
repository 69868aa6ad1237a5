"""Reads from the launching EHR's FHIR server with the user's access token.

The token only ever goes to the issuer's own FHIR base: an absolute URL elsewhere is refused, never
followed (pitfall F1). A 401 triggers one refresh and one retry.
"""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

import requests

from core.http import http_session

from .errors import SourceError
from .tokens import TokenManager

TIMEOUT = 10.0


def same_base(url: str, base: str) -> bool:
    """True when ``url`` is on ``base``'s scheme, host, port and path."""
    u, b = urlsplit(url), urlsplit(base.rstrip("/") + "/")
    return (u.scheme, u.netloc) == (b.scheme, b.netloc) and (u.path + "/").startswith(b.path)


class EhrFhirClient:
    def __init__(self, tokens: TokenManager, ctx_id: str, iss: str, request_id: str | None = None) -> None:
        self.tokens, self.ctx_id, self.iss = tokens, ctx_id, iss.rstrip("/")
        self.request_id = request_id or str(uuid.uuid4())

    def resolve(self, ref: str) -> str | None:
        """Absolute URL for a reference, or None when it points outside the issuer's server."""
        if ref.startswith(("http://", "https://")):
            return ref if same_base(ref, self.iss) else None
        return f"{self.iss}/{ref.lstrip('/')}"

    def get(self, ref: str, params: dict | None = None) -> dict:
        url = self.resolve(ref)
        if url is None:
            raise SourceError(f"refusing to send the EHR token outside {self.iss}: {ref}")
        resp = self._get(url, params, self.tokens.access_token(self.ctx_id))
        if resp.status_code == 401:
            resp = self._get(url, params, self.tokens.access_token(self.ctx_id, force_refresh=True))
        if resp.status_code != 200:
            raise SourceError(f"GET {url} answered {resp.status_code}")
        try:
            body = resp.json()
        except ValueError as exc:
            raise SourceError(f"GET {url} returned malformed JSON") from exc
        if not isinstance(body, dict) or "resourceType" not in body:
            raise SourceError(f"GET {url} did not return a FHIR resource")
        return body

    def _get(self, url: str, params: dict | None, token: str) -> requests.Response:
        try:
            return http_session().get(
                url,
                params=params,
                timeout=TIMEOUT,
                allow_redirects=False,
                headers={
                    "Authorization": f"Bearer {token}",
                    "Accept": "application/fhir+json",
                    "X-Request-Id": self.request_id,
                },
            )
        except requests.RequestException as exc:
            raise SourceError(f"GET {url} failed: {exc.__class__.__name__}") from exc
