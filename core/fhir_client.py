"""The one FHIR read client: GET only, bearer token, one renewal after a 401, plain typed errors.

Used for the launching EHR's reads (``launch.ehr_client.EhrFhirClient``) and for every organisation's
reads in the record fan-out (``app.record.fetch.FetchJob``). The token only goes to the reader's own
base (or, for a pager following ``next`` links, its own origin): any other absolute URL is refused,
never followed (pitfall F1). HTTP itself (pools, deadline, request id, size limit, byte budget, the retry
of a dropped connection) is :func:`core.http.http_get`.

Logging costs little: a GET answered 200 is a DEBUG line (built only when DEBUG is on: no record, no
formatting otherwise), any other status an INFO line, and :func:`log_source_reads` is the one INFO line per
organisation and launch (GETs, resources, bytes, time) that the record service writes when a fetch completes.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

import orjson

from .http import (
    DEFAULT_MAX_BYTES,
    DEFAULT_TIMEOUT,
    ByteBudget,
    Malformed,
    OutboundError,
    http_get,
    same_base,
    same_origin,
)

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"


class TokenSource:
    """How a server's bearer token is obtained, and renewed after a 401 (``None``: no renewal)."""

    def __init__(self, get: Callable[[], str | None], renew: Callable[[], str | None]) -> None:
        self._get, self._renew = get, renew

    def get(self) -> str | None:
        return self._get()

    def renew(self) -> str | None:
        return self._renew()


class OutsideBase(OutboundError):
    """The reference points outside the reader's server, so the token was not sent."""


class BadStatus(OutboundError):
    """An HTTP status other than 200 (a 401 only after the one renewal)."""

    def __init__(self, url: str, status: int) -> None:
        super().__init__(url, f"GET {url} answered {status}")
        self.status = status


class NotFhir(OutboundError):
    """JSON, but not a FHIR resource (or not the ``expect``-ed type)."""

    def __init__(self, url: str, expected: str | None) -> None:
        super().__init__(url, f"GET {url} did not return a FHIR {expected or 'resource'}")
        self.expected = expected


class FhirReader:
    """Reads from one FHIR server.

    ``scope="base"`` accepts only URLs under ``base`` (scheme, host, port and path); ``scope="origin"``
    accepts any path on the same scheme, host and port (for a pager's ``next`` links). ``max_bytes`` bounds
    one answer; ``budget`` (shared with other readers) bounds them all; ``received`` is the size of the last
    answer's body.
    """

    def __init__(
        self,
        base: str,
        tokens: TokenSource | None = None,
        request_id: str | None = None,
        *,
        scope: str = "base",
        timeout: float = DEFAULT_TIMEOUT,
        max_bytes: int = DEFAULT_MAX_BYTES,
        budget: ByteBudget | None = None,
    ) -> None:
        if scope not in ("base", "origin"):
            raise ValueError(f"scope must be 'base' or 'origin', not {scope!r}")
        self.base = base.rstrip("/")
        self.tokens = tokens
        self.request_id = request_id or str(uuid.uuid4())
        self.scope, self.timeout, self.max_bytes, self.budget = scope, timeout, max_bytes, budget
        self.received = 0

    def resolve(self, ref: str) -> str | None:
        """Absolute URL for a reference, or None when it points outside this server."""
        if ref.startswith(("http://", "https://")):
            allowed = same_base if self.scope == "base" else same_origin
            return ref if allowed(ref, self.base) else None
        return f"{self.base}/{ref.lstrip('/')}"

    def get(
        self, ref: str, params: dict | None = None, *, expect: str | None = None, deadline: float | None = None
    ) -> dict:
        """The resource at ``ref``; ``expect`` names the resourceType required (any when None).

        Raises an :class:`~core.http.OutboundError` subclass; the token source's own exceptions pass through.
        """
        url = self.resolve(ref)
        if url is None:
            raise OutsideBase(ref, f"refusing to send the token outside {self.base}: {ref}")
        token = self.tokens.get() if self.tokens is not None else None
        resp = self._send(url, params, token, deadline)
        if resp.status == 401 and token and self.tokens is not None:
            renewed = self.tokens.renew()
            if renewed:
                resp = self._send(url, params, renewed, deadline)
        if resp.status != 200:
            raise BadStatus(url, resp.status)
        try:
            body = orjson.loads(resp.body)  # bytes straight in: no text decode, ~2x faster than json
        except orjson.JSONDecodeError as exc:
            raise Malformed(url, f"GET {url} returned malformed JSON") from exc
        kind = body.get("resourceType") if isinstance(body, dict) else None
        if not isinstance(kind, str) or (expect is not None and kind != expect):
            raise NotFhir(url, expect)
        return body

    def _send(self, url: str, params: dict | None, token: str | None, deadline: float | None):
        headers = {"Accept": FHIR_JSON}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        resp = http_get(
            url,
            params=params,
            headers=headers,
            timeout=self.timeout,
            deadline=deadline,
            max_bytes=self.max_bytes,
            request_id=self.request_id,
            budget=self.budget,
        )
        self.received = len(resp.body)
        level = logging.DEBUG if resp.status == 200 else logging.INFO
        if log.isEnabledFor(level):  # nothing is built for a level that is off
            log.log(level, "GET %s -> %s (%d bytes)", resp.url, resp.status, self.received, extra=self._extra)
        return resp

    @property
    def _extra(self) -> dict:
        return {"request_id": self.request_id}


def log_source_reads(
    request_id: str, source: str, state: str, *, requests: int, resources: int, received: int, seconds: float
) -> None:
    """One INFO line for what one organisation answered in one launch (its GETs are DEBUG lines)."""
    if log.isEnabledFor(logging.INFO):
        log.info(
            "reads from %s: %s, %d GETs, %d resources, %d bytes in %.0f ms",
            source,
            state,
            requests,
            resources,
            received,
            seconds * 1000,
            extra={"request_id": request_id},
        )
