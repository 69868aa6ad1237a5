"""Every refusal in the trail, counted, without letting a flood of requests flood the trail.

**Who.** A refusal names the user. A request whose launch context is not in its browser's session (a copied
link, another user's tab, no session at all) is refused before the page runs; if the context id is known to
the state store, the event names that context's user with ``session`` = "not this browser's session" (or
"no session"), so the owner's trail shows someone else tried their launch.

**Counting, per known user.** Refusals are identical when the same user (same launch context) is refused on
the same route with the same method, presented the same way (own session, another browser's, none). The first
of a window writes a full ``refusal`` event at once; each identical one within ``[audit]
refusal_window_seconds`` adds one to a counter kept outside the chain (the state store: Redis across workers,
memory in one process). When the window has closed, one
``refusal-summary`` event carries the count (with the window's start and end and the first event's id): it is
written by the next identical refusal, or by the housekeeping worker (every few seconds, and at each request
at most once a second), whichever comes first. The summary is appended before the counter is removed, under
the counter's lock: a failure leaves the counter to be flushed later, so a count is never lost (a crash
between the two could at worst count a window twice).

**Counting, without a user.** A refusal with no known user (no session, unknown context, a launch that
failed before anyone signed in) is counted per client address and clock minute: one ``refusal`` event per
address and minute with the count, the first few pages and reasons, written when the minute has passed.

**Where closed windows are found.** Each window is listed in a due-bucket named by the minute its window
ends (``refusal:due:<minute>``); the worker walks the buckets from a cursor kept in the store, taking each
bucket atomically under its lock, so several workers and processes never flush one window twice.

**One per request.** A request records at most one refusal (the first: the access decision's, with its
basis); an ``after_request`` check (init_app) records a refusal for any 401/403 response that recorded none,
so a new route that refuses is audited without anyone remembering to.

Break-glass episodes (``BreakGlassEpisodes``): the start is the ``break-glass`` event; the end
(``break-glass-end``) is recorded when it is ended, or — for an expiry — by the first request or worker run
after it expired, with the actual end time.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict

from flask import g, has_request_context, request, session

from core.state import KeyValueStore, StoreUnavailable
from launch.identity import UserIdentity

from .store import AuditStore, AuditUnavailable, StoredEvent

log = logging.getLogger(__name__)

FLAG = "_scr_refusal_recorded"  # on flask.g: this request has recorded (or counted) its refusal
KEEP = 24 * 3600  # counters and buckets outlive their window by this much: the worker has a day to flush
BACKSCAN_MINUTES = 24 * 60
MAX_LISTED = 5  # pages / reasons named in an event about requests without a user


def iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


Write = Callable[..., StoredEvent]


class RefusalLedger:
    """``write(kind, **fields)`` appends one event (AuditTrail.write); ``contexts`` loads launch contexts."""

    def __init__(
        self,
        store: KeyValueStore,
        write: Write,
        *,
        window: float = 300.0,
        contexts=None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store, self.write, self.window, self.contexts, self.clock = store, write, float(window), contexts, clock

    # -- a refusal -----------------------------------------------------------------------------------------
    def refused(
        self,
        *,
        user: UserIdentity | None,
        ctx_id: str | None,
        request_id: str,
        outcome: str = "minor-failure",
        description: str = "",
        details: dict | None = None,
        **fields,
    ) -> StoredEvent | None:
        """Record one refusal: written now (first of its window, or outside a request), or counted."""
        details = dict(details or {})
        if not has_request_context():
            return self.write(
                "refusal",
                user=user,
                request_id=request_id,
                outcome=outcome,
                description=description,
                details=details,
                **fields,
            )
        if g.get(FLAG):
            return None  # one refusal per request: the first (the decision's, with its basis) says why
        g.setdefault(FLAG, True)
        page = f"{request.method} {request.path}"[:300]
        if user is None:
            user, ctx_id, note = self._owner(ctx_id)
            if note:
                details["session"] = note
                details["launch-context"] = ctx_id
        details.setdefault("page", page)
        now = self.clock()
        if user is None:
            self._count_anonymous(request.remote_addr or "unknown", page, description, request_id, now)
            return None
        actor = user.user_id or user.sub or user.name or "?"
        route = request.endpoint or request.path
        how = details.get("session") or ""  # another browser's attempt is not the owner's own refusal
        key = hashlib.sha256(f"{actor}|{ctx_id or '-'}|{route}|{request.method}|{how}".encode()).hexdigest()[:32]
        name = f"w:{key}"
        with self.store.lock(f"refusal-lock:{name}"):
            state = self.store.get(f"refusal:{name}")
            if state is not None and now < state["end"]:
                state["count"] += 1
                state["last"] = now
                self.store.set(f"refusal:{name}", state, ttl=int(self.window) + KEEP)
                return None
            if state is not None and state["count"]:
                self._summary(state)  # the previous window closed with repeats nobody has written yet
            details["refusal-window"] = f"{self.window:g}s"
            stored = self.write(
                "refusal",
                user=user,
                request_id=request_id,
                outcome=outcome,
                description=description,
                details=details,
                **fields,
            )
            self.store.set(
                f"refusal:{name}",
                {
                    "start": now,
                    "end": now + self.window,
                    "last": now,
                    "count": 0,
                    "first_seq": stored.seq,
                    "user": asdict(user),
                    "ctx": ctx_id,
                    "page": page,
                    "request_id": request_id,
                    "fields": {k: v for k, v in fields.items() if k in ("patient_nhs", "purpose", "what", "client_id")},
                    "session": details.get("session"),
                },
                ttl=int(self.window) + KEEP,
            )
        self._due(now + self.window, name)
        return stored

    def _owner(self, ctx_id: str | None) -> tuple[UserIdentity | None, str | None, str | None]:
        """The user of a launch context this request named but may not use, and how it was presented."""
        ctx_id = ctx_id or (request.view_args or {}).get("ctx_id")
        if not ctx_id or self.contexts is None or len(ctx_id) > 100:
            return None, ctx_id, None
        ctx = self.contexts.load(ctx_id)
        if ctx is None or ctx.identity is None:
            return None, ctx_id, None
        contexts = session.get("contexts") or []
        if ctx_id in contexts:
            return ctx.identity, ctx_id, None
        return ctx.identity, ctx_id, "not this browser's session" if contexts else "no session (context id presented)"

    def _count_anonymous(self, addr: str, page: str, description: str, request_id: str, now: float) -> None:
        minute = int(now // 60)
        name = f"a:{hashlib.sha256(addr.encode()).hexdigest()[:20]}:{minute}"
        with self.store.lock(f"refusal-lock:{name}"):
            state = self.store.get(f"refusal:{name}")
            new = state is None
            if new:
                state = {
                    "addr": addr,
                    "minute": minute,
                    "end": (minute + 1) * 60,
                    "count": 0,
                    "first": now,
                    "pages": [],
                    "reasons": [],
                    "request_id": request_id,
                }
            state["count"] += 1
            state["last"] = now
            if page not in state["pages"] and len(state["pages"]) < MAX_LISTED:
                state["pages"].append(page)
            reason = description.split(":", 1)[0][:80]
            if reason and reason not in state["reasons"] and len(state["reasons"]) < MAX_LISTED:
                state["reasons"].append(reason)
            self.store.set(f"refusal:{name}", state, ttl=60 + KEEP)
        if new:
            self._due(state["end"], name)

    # -- closing windows -------------------------------------------------------------------------------------
    def _due(self, end: float, name: str) -> None:
        bucket = f"refusal:due:{math.ceil(end / 60)}"
        with self.store.lock(bucket):
            listed = self.store.get(bucket) or {"names": []}
            if name not in listed["names"]:
                listed["names"].append(name)
            self.store.set(bucket, listed, ttl=int(self.window) + KEEP)

    def flush(self, force: bool = False) -> int:
        """Write the events of every closed window (``force``: of every open one too); returns how many.
        Raises AuditUnavailable when the trail cannot be written (the counters stay for the next run)."""
        try:
            with self.store.lock("refusal-lock:sweep", timeout=10.0 if force else 0.05):
                return self._sweep(force)
        except TimeoutError:
            return 0  # another worker is sweeping

    def _sweep(self, force: bool) -> int:
        now_minute = int(self.clock() // 60)
        cursor = (self.store.get("refusal:cursor") or {}).get("minute")
        first = cursor + 1 if cursor is not None else now_minute - BACKSCAN_MINUTES
        last = now_minute + (math.ceil(self.window / 60) + 1 if force else 0)
        written = 0
        for minute in range(first, last + 1):
            bucket = f"refusal:due:{minute}"
            with self.store.lock(bucket):
                listed = self.store.pop(bucket)
            names = (listed or {}).get("names", [])
            for i, name in enumerate(names):
                try:
                    written += self._close(name, force)
                except Exception:
                    self._due(minute * 60, names[i])  # put back what is left of the bucket, then give up
                    for rest in names[i + 1 :]:
                        self._due(minute * 60, rest)
                    raise
            if minute <= now_minute:
                self.store.set("refusal:cursor", {"minute": minute}, ttl=30 * 24 * 3600)
        return written

    def _close(self, name: str, force: bool) -> int:
        with self.store.lock(f"refusal-lock:{name}"):
            state = self.store.get(f"refusal:{name}")
            if state is None:
                return 0
            if not force and self.clock() < state["end"]:
                return 0  # a newer window of the same refusal: listed in its own bucket
            written = 0
            if name.startswith("a:"):
                self._anonymous_event(state)
                written = 1
            elif state["count"]:
                self._summary(state)
                written = 1
            self.store.delete(f"refusal:{name}")
            return written

    def _summary(self, state: dict) -> StoredEvent:
        count, first = state["count"], f"audit-{state['first_seq']}"
        until = min(state["end"], self.clock())
        return self.write(
            "refusal-summary",
            user=UserIdentity.from_dict(state["user"]) if state.get("user") else None,
            request_id=state["request_id"],
            outcome="minor-failure",
            description=f"{count} more identical refusal(s) of {state['page']} between {iso(state['start'])} and "
            f"{iso(until)} (the first is {first})",
            details={
                "count": count,
                "window-start": iso(state["start"]),
                "window-end": iso(until),
                "last-refusal": iso(state["last"]),
                "first-event": first,
                "page": state["page"],
                "launch-context": state.get("ctx"),
                "session": state.get("session"),
            },
            **state.get("fields", {}),
        )

    def _anonymous_event(self, state: dict) -> StoredEvent:
        start = state["minute"] * 60
        return self.write(
            "refusal",
            user=None,
            request_id=state["request_id"],
            outcome="minor-failure",
            description=f"{state['count']} refused request(s) without a known user from {state['addr']} "
            f"in the minute from {iso(start)}" + (f" ({', '.join(state['reasons'])})" if state["reasons"] else ""),
            what=", ".join(state["pages"]),
            details={
                "count": state["count"],
                "client-address": state["addr"],
                "minute": iso(start),
                "first-refusal": iso(state["first"]),
                "last-refusal": iso(state["last"]),
                "session": "no session",
            },
        )

    # -- for tests and the CLI -------------------------------------------------------------------------------
    def pending(self) -> int:
        """Refusals counted but not yet in the trail (every window in every bucket)."""
        total, seen = 0, set()
        now_minute = int(self.clock() // 60)
        cursor = (self.store.get("refusal:cursor") or {}).get("minute")
        first = cursor + 1 if cursor is not None else now_minute - BACKSCAN_MINUTES
        for minute in range(first, now_minute + math.ceil(self.window / 60) + 2):
            for name in (self.store.get(f"refusal:due:{minute}") or {}).get("names", []):
                state = self.store.get(f"refusal:{name}") if name not in seen else None
                seen.add(name)
                if state:
                    total += state["count"]
        return total


class BreakGlassEpisodes:
    """Open break-glass episodes (in the state store), so that each start gets its end in the trail."""

    INDEX = "break-glass-episodes"

    def __init__(self, store: KeyValueStore, write: Write, clock: Callable[[], float] = time.time) -> None:
        self.store, self.write, self.clock = store, write, clock

    def started(
        self,
        *,
        user: UserIdentity | None,
        ctx_id: str,
        nhs: str | None,
        until: float,
        started_seq: int,
        access_key: str,
        request_id: str,
    ) -> None:
        """Remember an episode; ``access_key``: the state-store key whose presence grants the access."""
        episode = f"{(user.user_id if user else None) or ctx_id}:{nhs}"
        # The same user and patient again: the earlier episode ends here, but its access key is the one just
        # granted anew, so it must not be removed.
        self._close(episode, "replaced by a new emergency access", self.clock(), request_id, remove_access=False)
        with self.store.lock(self.INDEX):
            index = self.store.get(self.INDEX) or {"open": {}}
            index["open"][episode] = {
                "user": asdict(user) if user else None,
                "ctx": ctx_id,
                "nhs": nhs,
                "since": self.clock(),
                "until": until,
                "seq": started_seq,
                "key": access_key,
                "request_id": request_id,
            }
            self.store.set(self.INDEX, index, ttl=30 * 24 * 3600)

    def close_expired(self) -> int:
        """Record the end of every episode whose time is up, with the time it ended; returns how many."""
        now = self.clock()
        index = self.store.get(self.INDEX) or {"open": {}}
        due = [(name, ep["until"]) for name, ep in index["open"].items() if ep["until"] <= now]
        return sum(self._close(name, "expired", until, None) for name, until in due)

    def end(self, user: UserIdentity | None, ctx_id: str, nhs: str | None, request_id: str, how: str = "ended") -> bool:
        """End an episode now (e.g. the user signed out): its access is removed and the end recorded."""
        return bool(self._close(f"{(user.user_id if user else None) or ctx_id}:{nhs}", how, self.clock(), request_id))

    def end_for_contexts(self, ctx_ids: list[str], request_id: str, how: str) -> int:
        """End every open episode started in one of these launch contexts (their session has ended)."""
        index = self.store.get(self.INDEX) or {"open": {}}
        wanted = set(ctx_ids)
        due = [name for name, ep in index["open"].items() if ep.get("ctx") in wanted]
        return sum(self._close(name, how, self.clock(), request_id) for name in due)

    def _close(self, episode: str, how: str, ended: float, request_id: str | None, remove_access: bool = True) -> int:
        with self.store.lock(self.INDEX):
            index = self.store.get(self.INDEX) or {"open": {}}
            ep = index["open"].get(episode)
            if ep is None:
                return 0
            ended = min(ended, ep["until"])
            self.write(
                "break-glass-end",
                user=UserIdentity.from_dict(ep["user"]) if ep.get("user") else None,
                request_id=request_id or ep["request_id"],
                patient_nhs=ep["nhs"],
                purpose="ETREAT",
                description=f"Emergency access (break-glass) {how} at {iso(ended)} (started {iso(ep['since'])}, "
                f"audit-{ep['seq']})",
                details={
                    "started-at": iso(ep["since"]),
                    "ended-at": iso(ended),
                    "ended-by": how,
                    "start-event": f"audit-{ep['seq']}",
                    "launch-context": ep["ctx"],
                },
            )
            del index["open"][episode]
            self.store.set(self.INDEX, index, ttl=30 * 24 * 3600)
            if remove_access and how != "expired":
                self.store.delete(ep["key"])
            return 1


class Housekeeping:
    """Closes refusal windows and expired break-glass episodes, and checkpoints a quiet chain head: at each
    request (at most once per ``throttle`` seconds) and in a daemon thread every ``interval`` seconds."""

    def __init__(
        self,
        ledger: RefusalLedger,
        episodes: BreakGlassEpisodes,
        audit_store: AuditStore,
        *,
        interval: float = 5.0,
        throttle: float = 1.0,
        background: bool = True,
    ) -> None:
        self.ledger, self.episodes, self.audit_store = ledger, episodes, audit_store
        self.interval, self.throttle, self.background = interval, throttle, background
        self._reset()
        os.register_at_fork(after_in_child=functools.partial(_reset_in_child, weakref.ref(self)))

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._last = 0.0
        self._atexit = False

    def on_request(self) -> None:
        """before_request: start the worker, and do the cheap part now (expiries, closed windows)."""
        self.ensure_started()
        now = time.monotonic()
        if now - self._last < self.throttle:
            return
        self._last = now
        self.run_once(checkpoint=False)

    def run_once(self, checkpoint: bool = True, force: bool = False) -> None:
        try:
            self.episodes.close_expired()
            self.ledger.flush(force=force)
            if checkpoint and self.audit_store.checkpoints is not None:
                self.audit_store.checkpoints.if_stale(self.audit_store.head())
        except (AuditUnavailable, StoreUnavailable, TimeoutError) as exc:
            log.error("audit housekeeping postponed: %s", exc)
        except Exception as exc:  # noqa: BLE001 - the worker must keep running
            log.exception("audit housekeeping failed: %s", exc)

    def ensure_started(self) -> None:
        if not self.background or (self._thread is not None and self._thread.is_alive()):
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            if not self._atexit:
                atexit.register(_flush_at_exit, weakref.ref(self))
                self._atexit = True
            self._stop.clear()
            self._thread = threading.Thread(
                target=_work, args=(weakref.ref(self), self._stop), name="audit-housekeeping", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()


def _work(ref: weakref.ref, stop: threading.Event) -> None:
    while not stop.is_set():
        keeper = ref()
        if keeper is None:
            return
        interval = keeper.interval
        keeper.run_once()
        del keeper
        stop.wait(interval)


def _flush_at_exit(ref: weakref.ref) -> None:
    """A process that stops writes what it counted in windows still open (its memory store goes with it)."""
    keeper = ref()
    if keeper is not None:
        keeper.stop()
        keeper.run_once(checkpoint=False, force=True)


def _reset_in_child(ref: weakref.ref) -> None:
    keeper = ref()
    if keeper is not None:
        keeper._reset()
