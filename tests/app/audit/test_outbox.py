"""Alerts leave the request through the outbox: fast requests, retries, dead letters, one delivery per row.

Every test runs on SQLite and on PostgreSQL (the ``store`` fixture; PostgreSQL is skipped only outside CI),
against a real webhook on 127.0.0.1.
"""

from __future__ import annotations

import logging
import threading
import time

import pytest
from sqlalchemy import select

from app.audit.alerts import Alert, AlertBox
from app.audit.outbox import DEAD, DELIVERED, PENDING, AlertOutbox
from app.audit.store import AuditStore
from app.schema import alert_outbox

from .webhook import Webhook, free_port, wait_for


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_alert(i: int = 0) -> Alert:
    return Alert(
        id=None,
        created="2025-01-01T00:00:00Z",
        kind="reason",
        recipient="care-team:Y01001",
        patient_nhs="9991000372",
        user_name="Dr Rhys Evans",
        user_org="Riverside",
        message=f"viewed the record ({i})",
    )


def rows(store: AuditStore) -> list[dict]:
    with store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(alert_outbox).order_by(alert_outbox.c.id))]


@pytest.fixture
def webhooks():
    started: list[Webhook] = []

    def start(**kwargs) -> Webhook:
        hook = Webhook(**kwargs).start()
        started.append(hook)
        return hook

    yield start
    for hook in started:
        hook.stop()


@pytest.fixture
def outboxes():
    made: list[AlertOutbox] = []

    def make(store: AuditStore, urls=(), **kwargs) -> AlertOutbox:
        box = AlertOutbox(store, urls, **kwargs)
        made.append(box)
        return box

    yield make
    for box in made:
        box.stop()


def test_raise_alert_returns_before_a_slow_webhook_answers(store, webhooks, outboxes):
    hook = webhooks(hold=3.0)  # answers after 3 s (or when released)
    outbox = outboxes(store, [hook.url], timeout=10.0, poll_seconds=0.05)
    box = AlertBox(store, outbox)
    alert = box.raise_alert(make_alert())
    assert not hook.answered.is_set()  # the request did not wait for the webhook
    assert alert.id is not None and [a.id for a in box.list()] == [alert.id]
    assert rows(store)[0]["state"] == PENDING or hook.answered.is_set()
    assert outbox.running  # started lazily by raise_alert
    assert hook.received.wait(10), "the worker never called the webhook"
    hook.release.set()
    wait_for(lambda: rows(store)[0]["state"] == DELIVERED)
    row = rows(store)[0]
    assert row["attempts"] == 1 and row["delivered_at"] and row["claimed_by"] is None
    assert hook.bodies == [{**alert.__dict__}]
    assert list(hook.keys.values()) == [1]


def test_one_row_per_destination_in_the_alerts_transaction(store, webhooks, outboxes):
    a, b = webhooks(), webhooks()
    outbox = outboxes(store, [a.url, b.url], background=False)
    alert = AlertBox(store, outbox).raise_alert(make_alert())
    assert [(r["alert_id"], r["destination"], r["state"], r["attempts"]) for r in rows(store)] == [
        (alert.id, a.url, PENDING, 0),
        (alert.id, b.url, PENDING, 0),
    ]
    assert not outbox.running and not a.received.is_set()  # background=False: nothing leaves until drained
    assert outbox.drain_once() == 2
    assert [r["state"] for r in rows(store)] == [DELIVERED, DELIVERED]
    assert len(a.bodies) == len(b.bodies) == 1


def test_no_destinations_no_rows_and_no_worker(store, outboxes):
    outbox = outboxes(store, [])
    alert = AlertBox(store, outbox).raise_alert(make_alert())
    assert alert.id is not None and rows(store) == []
    outbox.ensure_started()
    assert not outbox.running  # nothing to deliver: no thread
    assert AlertBox(store).raise_alert(make_alert()).id == alert.id + 1


def test_a_webhook_that_is_down_then_back_loses_nothing(store, outboxes):
    clock = Clock()
    port = free_port()  # nothing listens here yet
    hook = Webhook(port=port)
    outbox = outboxes(store, [hook.url], background=False, retry_seconds=5.0, clock=clock)
    alert = AlertBox(store, outbox).raise_alert(make_alert())

    assert outbox.drain_once() == 1
    row = rows(store)[0]
    assert (row["state"], row["attempts"]) == (PENDING, 1)
    assert row["last_error"] == "ConnectionError"
    assert row["next_attempt_at"] == pytest.approx(clock.now + 5.0)
    assert row["claimed_by"] is None and row["claimed_until"] is None

    assert outbox.drain_once() == 0  # not due yet
    clock.advance(5.0)
    assert outbox.drain_once() == 1
    row = rows(store)[0]
    assert (row["state"], row["attempts"]) == (PENDING, 2)
    assert row["next_attempt_at"] == pytest.approx(clock.now + 10.0)  # 5 s × 2**(2-1)

    hook.start()  # the webhook is back
    try:
        clock.advance(10.0)
        assert outbox.drain_once() == 1
        row = rows(store)[0]
        assert (row["state"], row["attempts"]) == (DELIVERED, 3)
        assert row["last_error"] == "ConnectionError"  # the history stays
        assert [b["id"] for b in hook.bodies] == [alert.id]
        assert outbox.drain_once() == 0
    finally:
        hook.stop()


def test_after_max_attempts_the_row_is_dead_and_kept(store, webhooks, outboxes, caplog):
    clock = Clock()
    hook = webhooks(status=500)
    outbox = outboxes(
        store, [hook.url], background=False, max_attempts=3, retry_seconds=5.0, max_backoff=8.0, clock=clock
    )
    box = AlertBox(store, outbox)
    alert = box.raise_alert(make_alert())
    delays = []
    with caplog.at_level(logging.WARNING, logger="app.audit.outbox"):
        for _ in range(3):
            assert outbox.drain_once() == 1
            delays.append(rows(store)[0]["next_attempt_at"] - clock.now)
            clock.advance(100.0)
    row = rows(store)[0]
    assert (row["state"], row["attempts"], row["last_error"]) == (DEAD, 3, "HTTP 500")
    assert delays[:2] == [pytest.approx(5.0), pytest.approx(8.0)]  # 5, then 10 capped at 8
    assert outbox.drain_once() == 0  # dead rows are not retried by themselves
    dead_logs = [r for r in caplog.records if r.levelno == logging.ERROR and "dead-lettered" in r.getMessage()]
    assert len(dead_logs) == 1 and "HTTP 500" in dead_logs[0].getMessage()
    assert "secret" not in caplog.text  # the webhook's query string (a token) is never logged
    assert [a.id for a in box.list()] == [alert.id]  # the alert itself is untouched
    assert outbox.counts() == {PENDING: 0, DELIVERED: 0, DEAD: 1}

    hook.status = 202  # fixed: an operator puts the dead rows back
    assert outbox.retry_dead() == 1
    assert (rows(store)[0]["state"], rows(store)[0]["attempts"]) == (PENDING, 0)
    assert outbox.drain_once() == 1
    assert rows(store)[0]["state"] == DELIVERED
    assert outbox.counts() == {PENDING: 0, DELIVERED: 1, DEAD: 0}


def test_a_leased_row_is_not_taken_by_another_drainer(store, webhooks, outboxes):
    clock = Clock()
    hook = webhooks()
    enqueue = outboxes(store, [hook.url], background=False, clock=clock)
    AlertBox(store, enqueue).raise_alert(make_alert())
    other_host = AuditStore(store.url)
    try:
        a = outboxes(store, background=False, lease_seconds=60.0, clock=clock)
        b = outboxes(other_host, background=False, lease_seconds=60.0, clock=clock)
        claimed = a._claim()  # A holds the lease (as if its POST were still in flight)
        assert [r["id"] for r in claimed] == [rows(store)[0]["id"]]
        assert rows(store)[0]["claimed_by"] == a.worker_id
        assert b.drain_once() == 0 and not hook.received.is_set()
        clock.advance(61.0)  # A died: its lease ends and B takes the row over
        assert b.drain_once() == 1
        assert sum(hook.keys.values()) == 1
        a._mark_failed(claimed[0], "late")  # A's late answer no longer counts: it lost the lease
        row = rows(store)[0]
        assert (row["state"], row["attempts"], row["last_error"]) == (DELIVERED, 1, None)
    finally:
        other_host.engine.dispose()


def test_two_drainers_never_deliver_a_row_twice(store, webhooks, outboxes):
    hook = webhooks(hold=0.005)
    n = 40
    box = AlertBox(store, outboxes(store, [hook.url], background=False))
    for i in range(n):
        box.raise_alert(make_alert(i))
    other_host = AuditStore(store.url)  # its own engine and pool, like a second host
    try:
        drainers = [
            outboxes(store, background=False, batch=3),
            outboxes(other_host, background=False, batch=3),
        ]
        handled = [0, 0]
        start = threading.Barrier(2)
        errors: list[BaseException] = []

        def drain(i: int) -> None:
            try:
                start.wait()
                while True:
                    got = drainers[i].drain_once()
                    if not got and all(r["state"] != PENDING for r in rows(store)):
                        return
                    handled[i] += got
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=drain, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors and not any(t.is_alive() for t in threads)
        assert sum(handled) == n, handled
        assert len(hook.keys) == n and set(hook.keys.values()) == {1}  # each row exactly once
        assert {r["state"] for r in rows(store)} == {DELIVERED}
        assert all(r["attempts"] == 1 for r in rows(store))
    finally:
        other_host.engine.dispose()


def test_two_background_workers_share_the_table(store, webhooks, outboxes):
    hook = webhooks()
    other_host = AuditStore(store.url)
    try:
        a = outboxes(store, [hook.url], poll_seconds=0.02, batch=2)
        b = outboxes(other_host, [hook.url], poll_seconds=0.02, batch=2)
        b.start()
        box = AlertBox(store, a)
        for i in range(10):
            box.raise_alert(make_alert(i))
        wait_for(lambda: all(r["state"] == DELIVERED for r in rows(store)))
        assert len(hook.keys) == 10 and set(hook.keys.values()) == {1}
        a.stop()
        b.stop()
        assert not a.running and not b.running
    finally:
        other_host.engine.dispose()


def test_the_worker_is_reset_in_a_forked_child(store, outboxes):
    import os

    outbox = outboxes(store, ["http://127.0.0.1:9/inbox"], poll_seconds=0.05)
    outbox.start()
    assert outbox.running
    parent_id = outbox.worker_id
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no worker thread of its own until asked, a new identity for its leases
        try:
            ok = outbox._thread is None and not outbox.running and outbox.worker_id != parent_id
            outbox.ensure_started()
            ok = ok and outbox.running
            outbox.stop(1)
            os.write(write, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    os.close(read)
    assert outbox.running and outbox.worker_id == parent_id


def test_a_discarded_outbox_ends_its_worker(store):
    import gc

    outbox = AlertOutbox(store, ["http://127.0.0.1:9/inbox"], poll_seconds=0.05)
    outbox.start()
    thread = outbox._thread
    assert thread.is_alive()
    del outbox
    gc.collect()
    thread.join(10)
    assert not thread.is_alive()
