"""Signed checkpoints of the audit chain's head, kept outside the audit database.

The hash chain (store.py) shows any row that was altered or removed from the middle, but not rows removed
from the end: an attacker with database access who disables the triggers and deletes the newest events
leaves a shorter chain that still verifies. A checkpoint is a small signed statement — "the chain had
``seq`` events and event ``seq`` had hash ``hash``" — appended as one JSON line to a file outside the audit
table (``[audit] checkpoint_file``), signed with an Ed25519 key (JWS, ``alg`` ``Ed25519``) that the viewer
uses for nothing else (``[audit] checkpoint_key_file``; generated in development like the viewer's keys when
``[viewer] generate_dev_keys`` is set; ``python -m app.audit.checkpoints /secure/path.jwks.json`` otherwise).

When: the store calls :meth:`Checkpoints.after_append` after each committed append (no database read; one
signature and one short append to the file when due): every ``every_events``-th event (``seq % N == 0``, so
several processes never write the same one) and at the first append after ``every_minutes`` without a
checkpoint in this process. The housekeeping worker (refusals.py) also checkpoints a head that moved but has
been quiet for ``every_minutes``, and ``flask audit checkpoint`` writes one now (e.g. from cron). With
``checkpoint_alerts`` each checkpoint is also raised as an alert (recipient ``audit-checkpoint``), so the
webhooks deliver a copy off the host.

``flask audit verify`` checks every checkpoint's signature, and that the chain holds each checkpointed event
with the checkpointed hash: deleting the newest events fails naming the checkpoint that still counts them.
Events after the latest checkpoint (fewer than N, younger than M minutes) are not covered yet.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, OKPKey

log = logging.getLogger(__name__)

ALG = "Ed25519"
TYP = "scr-audit-checkpoint"


def generate_key() -> KeySet:
    return KeySet([OKPKey.generate_key("Ed25519", parameters={"alg": ALG, "use": "sig"}, private=True, auto_kid=True)])


def load_key(path: Path, generate: bool = False) -> OKPKey | None:
    """The checkpoint signing key; created (0600, atomically) when allowed and missing; None when missing."""
    if not path.exists():
        if not generate:
            return None
        _create(path, generate_key())
    keys = KeySet.import_key_set(json.loads(path.read_text(encoding="utf-8")))
    for key in keys:
        if isinstance(key, OKPKey) and key.get("crv") == "Ed25519":
            return key
    raise ValueError(f"{path} holds no Ed25519 key")


def _create(path: Path, keyset: KeySet) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(json.dumps(keyset.as_dict(private=True)).encode())
    try:
        os.link(tmp, path)  # another process may have won the race: theirs is kept
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class Checkpoint:
    number: int  # line number in the file, from 1: how a checkpoint is named in messages
    seq: int
    hash: str
    at: str
    kid: str

    def name(self) -> str:
        return f"checkpoint #{self.number} (written {self.at}: {self.seq} events, head {self.hash[:12]}…)"


class CheckpointError(ValueError):
    """A checkpoint that cannot be trusted (bad signature, unreadable line)."""


class Checkpoints:
    def __init__(
        self,
        path: Path,
        key: OKPKey | None,
        *,
        every_events: int = 100,
        every_minutes: float = 5.0,
        on_written: Callable[[dict], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path, self.key = Path(path), key
        self.every_events, self.every_seconds = max(1, int(every_events)), float(every_minutes) * 60
        self.on_written, self.clock = on_written, clock
        self._lock = threading.Lock()
        self._last: tuple[int, float] | None = None  # (seq, epoch) of the latest checkpoint known here

    @property
    def enabled(self) -> bool:
        return self.key is not None

    # -- writing -----------------------------------------------------------------------------------------
    def after_append(self, seq: int, digest: str) -> None:
        """Called by the store after a committed append; never raises (the event is already durable)."""
        if self.key is None:
            return
        last_seq, last_at = self._latest()
        due = seq % self.every_events == 0 or (seq > last_seq and self.clock() - last_at >= self.every_seconds)
        if due:
            try:
                self.write(seq, digest)
            except Exception as exc:  # noqa: BLE001 - logged; the event itself is committed
                log.error("audit checkpoint at event %s could not be written: %s", seq, exc)

    def if_stale(self, head: tuple[int, str] | None) -> dict | None:
        """The worker's periodic call: checkpoint a head that moved and has waited ``every_minutes``."""
        if self.key is None or head is None:
            return None
        last_seq, last_at = self._latest()
        if head[0] > last_seq and self.clock() - last_at >= self.every_seconds:
            return self.write(*head)
        return None

    def write(self, seq: int, digest: str) -> dict:
        """Sign and append one checkpoint line (flushed and fsynced)."""
        if self.key is None:
            raise CheckpointError("no checkpoint key configured ([audit] checkpoint_key_file)")
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock()))
        payload = json.dumps({"seq": seq, "hash": digest, "at": at}, sort_keys=True, separators=(",", ":"))
        token = jws.serialize_compact(
            {"alg": ALG, "kid": self.key.kid, "typ": TYP}, payload.encode(), self.key, algorithms=[ALG]
        )
        line = {"seq": seq, "hash": digest, "at": at, "kid": self.key.kid, "jws": token}
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, (json.dumps(line, separators=(",", ":")) + "\n").encode())  # one write: one line
                os.fsync(fd)
            finally:
                os.close(fd)
            self._last = (max(seq, (self._last or (0, 0.0))[0]), self.clock())
        if self.on_written is not None:
            try:
                self.on_written(line)
            except Exception as exc:  # noqa: BLE001 - the file holds it; the copy elsewhere is a bonus
                log.error("audit checkpoint %s written but not sent on: %s", seq, exc)
        return line

    def _latest(self) -> tuple[int, float]:
        if self._last is None:
            with self._lock:
                if self._last is None:
                    last = None
                    try:
                        last = self._read_last_line()
                    except (OSError, ValueError) as exc:
                        log.error("audit checkpoint file %s unreadable: %s", self.path, exc)
                    self._last = (int(last["seq"]), self._epoch(last["at"])) if last else (0, 0.0)
        return self._last

    def _read_last_line(self) -> dict | None:
        if not self.path.exists():
            return None
        with self.path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 8192))
            lines = [ln for ln in fh.read().splitlines() if ln.strip()]
        return json.loads(lines[-1]) if lines else None

    @staticmethod
    def _epoch(at: str) -> float:
        import calendar

        return float(calendar.timegm(time.strptime(at, "%Y-%m-%dT%H:%M:%SZ")))

    # -- reading -----------------------------------------------------------------------------------------
    def read(self) -> list[Checkpoint]:
        """Every checkpoint in the file, each signature checked; CheckpointError names the first bad one."""
        if not self.path.exists():
            return []
        if self.key is None:
            raise CheckpointError(f"checkpoints in {self.path} but no checkpoint key to check them with")
        public = OKPKey.import_key(self.key.as_dict(private=False))
        found = []
        for number, raw in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
                signed = json.loads(jws.deserialize_compact(line["jws"], public, algorithms=[ALG]).payload)
            except (ValueError, KeyError, TypeError, JoseError) as exc:
                raise CheckpointError(
                    f"checkpoint #{number} in {self.path}: signature does not verify ({exc.__class__.__name__})"
                ) from exc
            if any(signed.get(k) != line.get(k) for k in ("seq", "hash", "at")):
                raise CheckpointError(f"checkpoint #{number} in {self.path}: its fields differ from what was signed")
            found.append(Checkpoint(number, int(signed["seq"]), signed["hash"], signed["at"], line.get("kid", "")))
        return found


def main(argv: list[str] | None = None) -> int:
    """``python -m app.audit.checkpoints <path>``: write a new checkpoint signing key (0600)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m app.audit.checkpoints /secure/path/audit-checkpoint.jwks.json", file=sys.stderr)
        return 2
    path = Path(args[0])
    if path.exists():
        print(f"{path} exists: refusing to overwrite the key existing checkpoints were signed with", file=sys.stderr)
        return 1
    _create(path, generate_key())
    print(f"checkpoint key written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
