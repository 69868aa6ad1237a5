"""One pooled HTTP session per process for OAuth and discovery calls (created lazily, after fork)."""

from __future__ import annotations

import os
import threading

import requests
from requests.adapters import HTTPAdapter

_local = {"pid": None, "session": None}
_lock = threading.Lock()
USER_AGENT = "shared-care-record-viewer/0.1"


def http_session() -> requests.Session:
    """A Session shared by the process; a forked worker gets its own (pitfall H2)."""
    with _lock:
        if _local["pid"] != os.getpid() or _local["session"] is None:
            session = requests.Session()
            adapter = HTTPAdapter(pool_connections=16, pool_maxsize=32, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers["User-Agent"] = USER_AGENT
            session.trust_env = False  # no proxies or .netrc credentials picked up from the environment
            _local.update(pid=os.getpid(), session=session)
        return _local["session"]
