"""The one outbound HTTP layer: pools, limits, the same-origin rule and plain typed errors.

- **GETs** (FHIR reads, discovery, JWKS) go through one urllib3 ``PoolManager`` per process: half the CPU
  per GET of a requests Session (measured 0.30 vs 0.56 ms), and a read needs none of requests' extras
  (cookies, hooks, redirects, proxies). :func:`http_get` adds the timeout or deadline, ``X-Request-Id``,
  the User-Agent, a maximum response size, and one retry of a GET whose pooled connection the server
  dropped (an idle keep-alive connection closed just as the request went out).
- **The fan-out's threads**: one process-wide ``ThreadPoolExecutor`` (:func:`fetch_executor`).
- **POSTs** to token endpoints use one requests ``Session`` (:func:`http_session`).

All three are built lazily and forgotten in a forked child (``os.register_at_fork``), so each gunicorn
worker builds its own and never shares a parent's sockets or threads (pitfall H2). Nothing here reads
proxy settings or credentials from the environment.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.exceptions import HTTPError as _Urllib3Error
from urllib3.exceptions import NewConnectionError, ProtocolError

log = logging.getLogger(__name__)

USER_AGENT = "shared-care-record-viewer/0.1"
DEFAULT_TIMEOUT = 10.0  # seconds for one GET (connect + answer + body) when no deadline is given
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # a larger response is refused, not read into memory
FETCH_WORKERS = 128  # two launches' first rounds (4 sources × 16 types each) at once per worker
GET_POOL_MAXSIZE = FETCH_WORKERS  # connections kept per host: the fan-out's concurrency (pitfall H3)
_CHUNK = 1 << 20  # body reads when the size is not known up front


# ---- pools (one set per process) ------------------------------------------------------------------------


class _Pools:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.http: urllib3.PoolManager | None = None
        self.executor: ThreadPoolExecutor | None = None
        self.session: requests.Session | None = None


_pools = _Pools()


def _reset_after_fork() -> None:
    """In a forked child: forget the parent's pools (and its lock, which another thread may have held)."""
    global _pools
    _pools = _Pools()


os.register_at_fork(after_in_child=_reset_after_fork)


def http_pool() -> urllib3.PoolManager:
    """The process's urllib3 PoolManager for GETs (no retries, no redirects; :func:`http_get` decides)."""
    pools = _pools
    if pools.http is None:
        with pools.lock:
            if pools.http is None:
                pools.http = urllib3.PoolManager(
                    num_pools=32,
                    maxsize=GET_POOL_MAXSIZE,
                    block=False,
                    retries=False,
                    headers={"User-Agent": USER_AGENT},
                )
    return pools.http


def fetch_executor() -> ThreadPoolExecutor:
    """The process-wide thread pool the record fan-out (and its side reads) run on."""
    pools = _pools
    if pools.executor is None:
        with pools.lock:
            if pools.executor is None:
                pools.executor = ThreadPoolExecutor(max_workers=FETCH_WORKERS, thread_name_prefix="fetch")
    return pools.executor


def http_session() -> requests.Session:
    """The process's requests Session, for token-endpoint POSTs."""
    pools = _pools
    if pools.session is None:
        with pools.lock:
            if pools.session is None:
                session = requests.Session()
                adapter = HTTPAdapter(pool_connections=16, pool_maxsize=32, max_retries=0)
                session.mount("http://", adapter)
                session.mount("https://", adapter)
                session.headers["User-Agent"] = USER_AGENT
                session.trust_env = False  # no proxies or .netrc credentials picked up from the environment
                pools.session = session
    return pools.session


# ---- where a token may go ----------------------------------------------------------------------------------


def same_origin(url: str, base: str) -> bool:
    """Scheme, host and port must all match: no downgrade to http, no other host (pitfall F1)."""
    try:
        u, b = urlsplit(url), urlsplit(base)
        return (u.scheme, u.hostname, u.port or _default_port(u.scheme)) == (
            b.scheme,
            b.hostname,
            b.port or _default_port(b.scheme),
        )
    except ValueError:  # an unparseable port
        return False


def same_base(url: str, base: str) -> bool:
    """Same origin as ``base`` and under its path (``{base}/…``), with no ``.``/``..`` segments."""
    if not same_origin(url, base):
        return False
    path, prefix = urlsplit(url).path, urlsplit(base).path.rstrip("/") + "/"
    if any(segment in (".", "..") for segment in path.split("/")):
        return False
    return (path + "/").startswith(prefix)


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


# ---- errors: plain, typed, never carrying a token -----------------------------------------------------------


class OutboundError(Exception):
    """A GET that gave no usable answer; ``str()`` is a log-safe detail naming the URL."""

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(detail)
        self.url = url


class TimedOut(OutboundError):
    """No complete answer before the timeout or deadline."""


class Unreachable(OutboundError):
    """No connection, or the connection broke (after the one retry a dropped connection gets)."""


class ResponseTooLarge(OutboundError):
    """The body was larger than the call's ``max_bytes``; reading stopped there."""

    def __init__(self, url: str, limit: int) -> None:
        super().__init__(url, f"GET {url} failed: response larger than {limit} bytes")
        self.limit = limit


class Malformed(OutboundError):
    """The body could not be decoded or parsed."""


class _Dropped(Exception):
    """Internal: the connection broke before a complete answer arrived (retried once)."""


# ---- one GET ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Response:
    url: str
    status: int
    headers: urllib3.HTTPHeaderDict
    body: bytes


def http_get(
    url: str,
    *,
    params: dict | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    deadline: float | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    request_id: str | None = None,
) -> Response:
    """GET ``url`` (plus ``params``) and read the whole body; any HTTP status is returned, not raised.

    ``deadline`` is a ``time.time()`` instant that caps ``timeout``. A connection that breaks before the
    answer is complete (typically a pooled keep-alive connection the server closed while idle) is retried
    once on a fresh connection; a refused connection or a timeout is not retried.
    """
    full_url = f"{url}{'&' if '?' in url else '?'}{urlencode(params, doseq=True)}" if params else url
    sent = {"User-Agent": USER_AGENT, **(headers or {})}  # a request's headers replace the pool's
    if request_id:
        sent["X-Request-Id"] = request_id
    end = time.time() + timeout
    if deadline is not None:
        end = min(end, deadline)
    for attempt in (1, 2):
        remaining = end - time.time()
        if remaining <= 0.01:
            raise TimedOut(url, f"GET {url} failed: timed out")
        try:
            return _attempt(full_url, url, sent, remaining, end, max_bytes)
        except _Dropped as exc:
            if attempt == 2:
                raise Unreachable(url, f"GET {url} failed: connection broken twice ({exc})") from exc.__cause__
            log.info("GET %s: connection dropped (%s); retrying once", url, exc, extra={"request_id": request_id})
    raise AssertionError("unreachable")  # pragma: no cover


def _attempt(full_url: str, url: str, headers: dict, remaining: float, end: float, max_bytes: int) -> Response:
    try:
        resp = http_pool().request(
            "GET",
            full_url,
            headers=headers,
            timeout=urllib3.Timeout(total=remaining),
            redirect=False,
            retries=False,
            preload_content=False,
        )
    except NewConnectionError as exc:  # refused, no route, DNS: a subclass of the timeout errors, so first
        raise Unreachable(url, f"GET {url} failed: {exc.__class__.__name__}") from exc
    except urllib3.exceptions.TimeoutError as exc:
        raise TimedOut(url, f"GET {url} failed: timed out") from exc
    except ProtocolError as exc:
        raise _Dropped(_reason(exc)) from exc
    except (_Urllib3Error, OSError) as exc:  # TLS failures, unparseable URLs
        raise Unreachable(url, f"GET {url} failed: {exc.__class__.__name__}") from exc
    try:
        body = _read_body(resp, url, max_bytes, end)
    except urllib3.exceptions.TimeoutError as exc:
        raise TimedOut(url, f"GET {url} failed: timed out") from exc
    except ProtocolError as exc:
        raise _Dropped(_reason(exc)) from exc
    except urllib3.exceptions.DecodeError as exc:
        raise Malformed(url, f"GET {url} failed: body could not be decoded") from exc
    except (_Urllib3Error, OSError) as exc:
        raise Unreachable(url, f"GET {url} failed: {exc.__class__.__name__}") from exc
    finally:
        resp.release_conn()
    return Response(url=full_url, status=resp.status, headers=resp.headers, body=body)


def _read_body(resp: urllib3.BaseHTTPResponse, url: str, max_bytes: int, end: float) -> bytes:
    """The whole body, or :class:`ResponseTooLarge` as soon as more than ``max_bytes`` arrive."""
    length = resp.headers.get("Content-Length")
    declared = int(length) if length and length.isdigit() else None
    if declared is not None and declared > max_bytes:
        _discard(resp)
        raise ResponseTooLarge(url, max_bytes)
    if declared is not None and not resp.headers.get("Content-Encoding"):
        body = resp.read()  # the common case: one read of a known, allowed size
        if len(body) > max_bytes:  # pragma: no cover - http.client stops at Content-Length
            raise ResponseTooLarge(url, max_bytes)
        return body
    chunks, total = [], 0
    while True:
        chunk = resp.read(min(_CHUNK, max_bytes - total + 1))
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > max_bytes:
            _discard(resp)
            raise ResponseTooLarge(url, max_bytes)
        if time.time() > end:
            _discard(resp)
            raise TimedOut(url, f"GET {url} failed: timed out while reading")
        chunks.append(chunk)


def _discard(resp: urllib3.BaseHTTPResponse) -> None:
    """Close the connection instead of reading the rest; the pool opens a new one next time."""
    resp.close()


def _reason(exc: ProtocolError) -> str:
    cause = exc.args[1] if len(exc.args) > 1 else exc.__cause__
    return cause.__class__.__name__ if cause is not None else "ProtocolError"
