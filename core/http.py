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
import re
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
from urllib3.util import parse_url

log = logging.getLogger(__name__)

USER_AGENT = "shared-care-record-viewer/0.1"
DEFAULT_TIMEOUT = 10.0  # seconds for one GET (connect + answer + body) when no deadline is given
DEFAULT_MAX_BYTES = 16 * 1024 * 1024  # a larger response is refused: reading stops there (never read, then checked)
FETCH_WORKERS = 128  # two launches' first rounds (4 sources × 16 types each) at once per worker
GET_POOL_MAXSIZE = FETCH_WORKERS  # connections kept per host: the fan-out's concurrency (pitfall H3)
_CHUNK = 1 << 20  # the most one read of a body asks for (each read is one receive, so the deadline holds)


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
    """Scheme, host and port must all match: no downgrade to http, no other host (pitfall F1).

    A URL with userinfo (``http://127.0.0.1:443@evil/``), a backslash, whitespace or a control character is
    never the same origin: a legitimate server sends none of them, and they are where URL parsers disagree
    (``http://evil\\@127.0.0.1/`` is 127.0.0.1 to urllib.parse but evil to urllib3, which would connect
    there). The host and port must also be the same to urllib3's own parser, the one that connects.
    """
    if not isinstance(url, str) or _SUSPICIOUS.search(url):
        return False
    try:
        u, b = urlsplit(url), urlsplit(base)
        if "@" in u.netloc:
            return False
        mine = (u.scheme, u.hostname, u.port or _default_port(u.scheme))
        if mine != (b.scheme, b.hostname, b.port or _default_port(b.scheme)):
            return False
        connects = parse_url(url)
        return (
            (connects.scheme or "").lower(),
            (connects.host or "").lower().strip("[]"),
            connects.port or _default_port(mine[0]),
        ) == mine
    except ValueError:  # an unparseable port (urllib3's LocationParseError is a ValueError too)
        return False


def same_base(url: str, base: str) -> bool:
    """Same origin as ``base`` and under its path (``{base}/…``), with no ``.``/``..`` segments."""
    if not same_origin(url, base):
        return False
    path, prefix = urlsplit(url).path, urlsplit(base).path.rstrip("/") + "/"
    if any(segment in (".", "..") for segment in path.split("/")):
        return False
    return (path + "/").startswith(prefix)


_SUSPICIOUS = re.compile(r"[\\\x00-\x20\x7f]")  # backslash, whitespace and control characters


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


class BudgetExhausted(OutboundError):
    """The caller's :class:`ByteBudget` (e.g. one launch's total) ran out; reading stopped there."""

    def __init__(self, url: str, limit: int) -> None:
        super().__init__(url, f"GET {url} failed: the byte budget of {limit} bytes is spent")
        self.limit = limit


class Malformed(OutboundError):
    """The body could not be decoded or parsed."""


class _Dropped(Exception):
    """Internal: the connection broke before a complete answer arrived (retried once)."""


# ---- a byte budget shared by many GETs -----------------------------------------------------------------------


class ByteBudget:
    """Bytes that several GETs (e.g. every read of one launch) may receive between them, charged as they arrive.

    A declared ``Content-Length`` is charged before the body is read; otherwise each chunk is charged as it is
    received. The total received never passes ``limit`` by more than one chunk per GET in flight.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    @property
    def left(self) -> int:
        return max(self.limit - self.used, 0)

    def take(self, n: int) -> bool:
        """Charge ``n`` bytes; False (and nothing charged) when that would pass the limit."""
        with self._lock:
            if self.used + n > self.limit:
                self.used = self.limit  # spent: a smaller later answer must not slip in after a refused one
                return False
            self.used += n
            return True


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
    budget: ByteBudget | None = None,
) -> Response:
    """GET ``url`` (plus ``params``) and read the whole body; any HTTP status is returned, not raised.

    ``deadline`` is a ``time.time()`` instant that caps ``timeout``, for the body too: it is read one receive at
    a time with the socket's timeout set to what is left, so a server trickling bytes cannot hold the caller
    past it. More than ``max_bytes`` (or more than ``budget`` has left) raises as soon as it arrives; the rest
    is never read. A connection that breaks before the
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
            return _attempt(full_url, url, sent, remaining, end, max_bytes, budget)
        except _Dropped as exc:
            if attempt == 2:
                raise Unreachable(url, f"GET {url} failed: connection broken twice ({exc})") from exc.__cause__
            log.info("GET %s: connection dropped (%s); retrying once", url, exc, extra={"request_id": request_id})
    raise AssertionError("unreachable")  # pragma: no cover


def _attempt(
    full_url: str, url: str, headers: dict, remaining: float, end: float, max_bytes: int, budget: ByteBudget | None
) -> Response:
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
        body = _read_body(resp, url, max_bytes, end, budget)
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


def _read_body(
    resp: urllib3.BaseHTTPResponse, url: str, max_bytes: int, end: float, budget: ByteBudget | None = None
) -> bytes:
    """The whole body, or :class:`ResponseTooLarge` / :class:`BudgetExhausted` as soon as too much arrives.

    Read one receive at a time (``read1``) with the socket's timeout cut to what is left before ``end``: a
    body trickled a byte at a time stops at the deadline, not after it.
    """
    length = resp.headers.get("Content-Length")
    declared = int(length) if length and length.isdigit() else None
    if declared is not None and declared > max_bytes:
        _discard(resp)
        raise ResponseTooLarge(url, max_bytes)
    exact = declared is not None and not resp.headers.get("Content-Encoding")  # decoded size = declared size
    if exact and budget is not None and not budget.take(declared):
        _discard(resp)
        raise BudgetExhausted(url, budget.limit)
    sock = getattr(resp.connection, "sock", None)
    chunks, total = [], 0
    while True:
        remaining = end - time.time()
        if remaining <= 0:
            _discard(resp)
            raise TimedOut(url, f"GET {url} failed: timed out while reading")
        if sock is not None:
            sock.settimeout(remaining)
        chunk = resp.read1(min(_CHUNK, max_bytes - total + 1))
        if not chunk:
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        total += len(chunk)
        if total > max_bytes:
            _discard(resp)
            raise ResponseTooLarge(url, max_bytes)
        if not exact and budget is not None and not budget.take(len(chunk)):
            _discard(resp)
            raise BudgetExhausted(url, budget.limit)
        chunks.append(chunk)


def _discard(resp: urllib3.BaseHTTPResponse) -> None:
    """Close the connection instead of reading the rest; the pool opens a new one next time."""
    resp.close()


def _reason(exc: ProtocolError) -> str:
    cause = exc.args[1] if len(exc.args) > 1 else exc.__cause__
    return cause.__class__.__name__ if cause is not None else "ProtocolError"
