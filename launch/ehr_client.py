"""Reads from the launching EHR's FHIR server with the user's access token.

A thin wrapper over :class:`core.fhir_client.FhirReader`: the token only ever goes to the issuer's own
FHIR base (an absolute URL elsewhere is refused, never followed: pitfall F1), and a 401 triggers one
refresh and one retry. Failures are :class:`~launch.errors.SourceError`; the token manager's own errors
(session expired, relaunch required) pass through.
"""

from __future__ import annotations

from core.fhir_client import FhirReader, TokenSource
from core.http import OutboundError

from .errors import SourceError
from .tokens import TokenManager

TIMEOUT = 10.0


class EhrFhirClient:
    def __init__(self, tokens: TokenManager, ctx_id: str, iss: str, request_id: str | None = None) -> None:
        self.tokens, self.ctx_id, self.iss = tokens, ctx_id, iss.rstrip("/")
        self._reader = FhirReader(
            self.iss,
            TokenSource(
                lambda: tokens.access_token(ctx_id),
                lambda: tokens.access_token(ctx_id, force_refresh=True),
            ),
            request_id,
            timeout=TIMEOUT,
        )
        self.request_id = self._reader.request_id

    def resolve(self, ref: str) -> str | None:
        """Absolute URL for a reference, or None when it points outside the issuer's server."""
        return self._reader.resolve(ref)

    def get(self, ref: str, params: dict | None = None) -> dict:
        try:
            return self._reader.get(ref, params)
        except OutboundError as exc:
            raise SourceError(str(exc)) from exc
