"""The Python queue API: declaring queues, enqueueing (also inside the caller's transaction),
in-process workers, workflow-level retries, the dead-letter state, and the `queues` CLI."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from pydantic import BaseModel

import pgdurable
from pgdurable import (
    InvalidArgument,
    RateLimit,
    RegistrationError,
    SerializationError,
    UnknownQueue,
    Worker,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowNotFound,
)
from tests.support.processes import cli
from tests.support.runs import background_worker
from tests.support.sql import call, count
from tests.support.waiting import wait_until

Conn = psycopg.Connection[Any]


def drain(app: pgdurable.App, *queues: str, concurrency: int = 4) -> Worker:
    """Run an in-process worker until nothing is claimable."""
    worker = Worker(app, queues=list(queues) or None, concurrency=concurrency,
                    poll_interval=0.02, exit_when_idle=True)
    worker.run()
    worker.stop()
    return worker


def nothing_written(conn: Conn) -> bool:
    return count(conn, "pgdurable.workflows") == 0 and count(conn, "pgdurable.ready") == 0


# -- enqueue in the caller's transaction ---------------------------------------------------------


def test_enqueue_in_a_rolled_back_transaction_never_exists(
    dsn: str, conn: Conn, app: pgdurable.App
) -> None:
    conn.execute("create table orders (id integer primary key)")
    emails = app.queue("emails")
    ran: list[int] = []

    @app.workflow()
    def send(order_id: int) -> int:
        ran.append(order_id)
        return order_id

    with psycopg.connect(dsn) as tx:
        tx.execute("insert into orders values (1)")
        handle = emails.enqueue(send, 1, conn=tx, workflow_id="order-1")
        many = emails.enqueue_many(send, [(2,), (3,)], conn=tx)
        # Visible in the transaction, invisible outside it.
        inside = tx.execute("select count(*) from pgdurable.workflows").fetchone()
        assert inside is not None and inside[0] == 3
        assert nothing_written(conn)
        assert handle.workflow_id == "order-1" and len(many) == 2
        tx.rollback()

    assert drain(app, "emails").started == 0
    assert ran == []
    assert nothing_written(conn)
    assert count(conn, "orders") == 0
    for h in [handle, *many]:
        with pytest.raises(WorkflowNotFound):
            h.status()


def test_enqueue_in_a_committed_transaction_runs_once(
    dsn: str, conn: Conn, app: pgdurable.App
) -> None:
    conn.execute("create table orders (id integer primary key)")
    emails = app.queue("emails")
    ran: list[int] = []

    @app.workflow()
    def send(order_id: int) -> str:
        ran.append(order_id)
        return f"sent {order_id}"

    with psycopg.connect(dsn) as tx:
        tx.execute("insert into orders values (1), (2), (3)")
        handle = emails.enqueue(send, 1, conn=tx, workflow_id="order-1")
        many = emails.enqueue_many(send, [(2,), [3]], conn=tx)
        tx.commit()

    assert handle.status() == "pending"
    assert drain(app, "emails").started == 3
    assert sorted(ran) == [1, 2, 3]
    assert handle.result(timeout=5) == "sent 1"
    assert [h.result(timeout=5) for h in many] == ["sent 2", "sent 3"]
    # Enqueueing the same id again returns the finished run; nothing runs twice.
    again = emails.enqueue(send, 1, workflow_id="order-1")
    assert again.workflow_id == "order-1" and again.status() == "succeeded"
    assert drain(app, "emails").started == 0
    assert sorted(ran) == [1, 2, 3]


# -- bad input -----------------------------------------------------------------------------------


def test_bad_arguments_fail_at_enqueue_and_write_nothing(conn: Conn, app: pgdurable.App
                                                         ) -> None:
    q = app.queue("q")

    @app.workflow()
    def flow(n: int, label: str) -> str:
        return label * n

    def plain(n: int) -> int:
        return n

    serialisation: list[Any] = [
        lambda: q.enqueue(flow, "not a number", "x"),
        lambda: q.enqueue(flow, 1),
        lambda: q.enqueue(flow, 1, "x", "extra"),
        lambda: q.enqueue(flow, 1, label=object()),
        lambda: q.enqueue(flow, 1, "nul \x00 byte"),
        lambda: q.enqueue(plain, 1),  # type: ignore[arg-type]
        lambda: q.enqueue_many(flow, [(1, "ok"), ("bad", "item")]),
    ]
    for attempt in serialisation:
        with pytest.raises(SerializationError):
            attempt()
    invalid: list[Any] = [
        lambda: q.enqueue(flow, 1, "x", priority="high"),  # type: ignore[arg-type]
        lambda: q.enqueue(flow, 1, "x", priority=1.5),  # type: ignore[arg-type]
        lambda: q.enqueue(flow, 1, "x", delay=-1),
        lambda: q.enqueue(flow, 1, "x", delay=float("nan")),
        lambda: q.enqueue(flow, 1, "x", delay=float("inf")),
        lambda: q.enqueue(flow, 1, "x", delay=timedelta(seconds=-1)),
        lambda: q.enqueue(flow, 1, "x", max_attempts=0),
        lambda: q.enqueue(flow, 1, "x", workflow_id=""),
        lambda: q.enqueue_many(flow, ["ab"]),
        lambda: q.enqueue_many(flow, [(1, "ok")], delay=-2),
        lambda: q.enqueue_many(flow, [(1, "ok")], max_attempts=-1),
    ]
    for attempt in invalid:
        with pytest.raises(InvalidArgument):
            attempt()
    with pytest.raises(RegistrationError):
        q.enqueue("no.such.workflow", 1)
    assert nothing_written(conn)


def test_bad_keys_and_priorities_are_invalid_arguments(conn: Conn, app: pgdurable.App) -> None:
    q = app.queue("q")

    @app.workflow()
    def flow(n: int) -> int:
        return n

    attempts: list[Any] = [
        lambda: q.enqueue(flow, 1, dedup_key=5),  # type: ignore[arg-type]
        lambda: q.enqueue(flow, 1, partition_key=5),  # type: ignore[arg-type]
        lambda: q.enqueue_many(flow, [(1,)], priority="high"),  # type: ignore[arg-type]
    ]
    for attempt in attempts:
        with pytest.raises(InvalidArgument):
            attempt()
    assert nothing_written(conn)


def test_invalid_limits_fail_at_declaration(conn: Conn, app: pgdurable.App) -> None:
    bad_rates: list[tuple[Any, ...]] = [
        (0,), (-1,), (1.5,), (True,), (1, 0), (1, -1.0), (1, float("nan")), (1, float("inf")),
    ]
    for args in bad_rates:
        with pytest.raises(InvalidArgument):
            RateLimit(*args)
    bad_queues: list[dict[str, Any]] = [
        {"concurrency": 0}, {"concurrency": -1}, {"concurrency": 1.5}, {"concurrency": True},
        {"worker_concurrency": 0}, {"partition_concurrency": -3},
        {"rate_limit": (10, 1.0)}, {"rate_limit": 10},
    ]
    for limits in bad_queues:
        with pytest.raises(InvalidArgument):
            app.queue("q", **limits)
    for name in ("", None):
        with pytest.raises(InvalidArgument):
            app.queue(name, concurrency=1)  # type: ignore[arg-type]
    app.queue("q", concurrency=1)  # the failed declarations did not take the name
    with pytest.raises(RegistrationError):
        app.queue("q", concurrency=2)
    assert {r["name"] for r in app.queue_stats()} == {"default", "q"}


def test_enqueue_into_an_unknown_queue_is_unknown_queue(conn: Conn, app: pgdurable.App
                                                        ) -> None:
    @app.workflow()
    def flow(n: int) -> int:
        return n

    ghost = pgdurable.Queue(app, "ghost")  # never declared in the database
    with pytest.raises(UnknownQueue) as info:
        ghost.enqueue(flow, 1)
    assert "ghost" in str(info.value)
    with pytest.raises(UnknownQueue):
        ghost.enqueue_many(flow, [(1,), (2,)])
    assert nothing_written(conn)


def test_worker_arguments_are_checked(app: pgdurable.App, dsn: str) -> None:
    with pytest.raises(RegistrationError):
        Worker(app)  # registers no workflows

    @app.workflow()
    def flow() -> None:
        return None

    for kwargs in ({"concurrency": 0}, {"concurrency": True}, {"poll_interval": 0},
                   {"grace_seconds": -1}):
        with pytest.raises(InvalidArgument):
            Worker(app, **kwargs)
    with pytest.raises(InvalidArgument, match="ghost"):
        Worker(app, queues=["ghost"], exit_when_idle=True).run()


# -- queue settings in the database --------------------------------------------------------------


def test_queue_settings_are_stored_and_updated_by_a_redeploy(dsn: str, app: pgdurable.App
                                                             ) -> None:
    app.queue("emails", concurrency=10, worker_concurrency=2,
              rate_limit=RateLimit(100, per_seconds=1.5), partition_concurrency=3)
    stats = {r["name"]: r for r in app.queue_stats()}
    assert {k: stats["emails"][k] for k in ("concurrency", "worker_concurrency", "rate_limit",
                                            "rate_period_seconds", "partition_concurrency",
                                            "paused")} == {
        "concurrency": 10, "worker_concurrency": 2, "rate_limit": 100,
        "rate_period_seconds": 1.5, "partition_concurrency": 3, "paused": False}
    app.queue("late")  # declared after the App connected: written at once
    assert "late" in {r["name"] for r in app.queue_stats()}
    app.pause_queue("emails")

    with pgdurable.App(dsn) as redeployed:
        redeployed.queue("emails", concurrency=5)
        stats = {r["name"]: r for r in redeployed.queue_stats()}
    assert (stats["emails"]["concurrency"], stats["emails"]["worker_concurrency"],
            stats["emails"]["rate_limit"], stats["emails"]["paused"]) == (5, None, None, True)
    with pytest.raises(UnknownQueue):
        app.pause_queue("ghost")


# -- results, options, retries -------------------------------------------------------------------


class Receipt(BaseModel):
    order_id: int
    lines: list[str]


def test_result_of_a_queued_run_after_a_worker_ran_it(conn: Conn, app: pgdurable.App) -> None:
    q = app.queue("q")

    @app.workflow()
    def checkout(order_id: int) -> Receipt:
        return Receipt(order_id=order_id, lines=[f"item {order_id}"])

    @app.workflow()
    def broken(order_id: int) -> Receipt:
        raise ValueError(f"no order {order_id}")

    ok = q.enqueue(checkout, 7)
    bad = q.enqueue(broken, 8)
    with pytest.raises(TimeoutError):
        ok.result(timeout=0.2)  # nobody serves the queue yet
    assert ok.status() == "pending"
    drain(app, "q")
    receipt = ok.result(timeout=5)
    assert isinstance(receipt, Receipt) and receipt == Receipt(order_id=7, lines=["item 7"])
    assert app.retrieve(ok.workflow_id).result(timeout=5) == receipt
    with pytest.raises(WorkflowFailed) as info:
        bad.result(timeout=5)
    assert (info.value.type_name, info.value.message) == ("ValueError", "no order 8")


def test_enqueue_options_are_stored(conn: Conn, app: pgdurable.App) -> None:
    q = app.queue("q")

    @app.workflow(max_attempts=4, retry_backoff=0.25)
    def flow(n: int) -> int:
        return n

    deadline = datetime(2040, 1, 1, tzinfo=UTC)
    h = q.enqueue(flow, 1, priority=-3, delay=timedelta(seconds=60), partition_key="tenant-1",
                  dedup_key="d-1", deadline=deadline)
    other = q.enqueue(flow, 2, max_attempts=1, delay=0.5)
    row = call(conn, "select * from pgdurable.workflows where id = %s", (h.workflow_id,))[0]
    assert (row["queue"], row["priority"], row["partition_key"], row["dedup_key"],
            row["deadline"], row["max_attempts"], row["retry_backoff"]) == (
        "q", -3, "tenant-1", "d-1", deadline, 4, 0.25)
    assert 59 < (row["available_at"] - row["created_at"]).total_seconds() <= 60
    assert row["inputs"] == {"args": [1], "kwargs": {}}
    assert q.enqueue(flow, 99, dedup_key="d-1").workflow_id == h.workflow_id
    row = call(conn, "select * from pgdurable.workflows where id = %s", (other.workflow_id,))[0]
    assert row["max_attempts"] == 1
    many = q.enqueue_many(flow, [(1,), (2,)], priority=2, partition_key="p", max_attempts=2)
    rows = call(conn, "select priority, partition_key, max_attempts, retry_backoff "
                      "from pgdurable.workflows where id = any(%s)",
                ([m.workflow_id for m in many],))
    assert {tuple(r.values()) for r in rows} == {(2, "p", 2, 0.25)}


def test_a_delayed_run_starts_on_the_poll_fallback(conn: Conn, app: pgdurable.App) -> None:
    q = app.queue("q")

    @app.workflow()
    def flow(n: int) -> int:
        return n + 1

    with background_worker(app, "q"):
        time.sleep(0.1)
        h = q.enqueue(flow, 1, delay=0.3)  # delayed runs send no NOTIFY: polling finds it
        assert h.result(timeout=10) == 2
    row = call(conn, "select started_at - created_at as wait from pgdurable.workflows")[0]
    assert row["wait"].total_seconds() >= 0.3


def test_a_run_past_its_deadline_is_cancelled(conn: Conn, app: pgdurable.App) -> None:
    q = app.queue("q")
    ran: list[int] = []

    @app.workflow()
    def flow(n: int) -> int:
        ran.append(n)
        return n

    late = q.enqueue(flow, 1, deadline=datetime.now(UTC) - timedelta(seconds=1))
    fine = q.enqueue(flow, 2, deadline=datetime.now(UTC) + timedelta(minutes=5))
    drain(app, "q")
    assert fine.result(timeout=5) == 2 and ran == [2]
    with pytest.raises(WorkflowCancelled):
        late.result(timeout=5)
    info = late.info()
    assert info.error is not None and info.error["type"] == "DeadlineExceeded"


def test_workflow_retries_replay_done_steps_and_rerun_the_failing_one(
    conn: Conn, app: pgdurable.App
) -> None:
    q = app.queue("q")
    prepared: list[int] = []
    flaky_calls: list[float] = []

    @app.step()
    def prepare(n: int) -> int:
        prepared.append(n)
        return n * 10

    @app.step()
    def flaky(value: int) -> int:
        flaky_calls.append(time.monotonic())
        if len(flaky_calls) < 3:
            raise ConnectionError(f"transient failure {len(flaky_calls)}")
        return value + 1

    @app.workflow(max_attempts=3, retry_backoff=0.05)
    def job(n: int) -> int:
        return flaky(prepare(n))

    handle = q.enqueue(job, 4)
    with background_worker(app, "q"):
        assert handle.result(timeout=20) == 41
    assert prepared == [4]  # the done step was replayed, not re-run
    assert len(flaky_calls) == 3
    # Backoff computed in SQL: 0.05 s after the first failure, 0.1 s after the second.
    assert flaky_calls[1] - flaky_calls[0] >= 0.05
    assert flaky_calls[2] - flaky_calls[1] >= 0.1
    row = call(conn, "select status, attempt, failures, error from pgdurable.workflows")[0]
    assert (row["status"], row["attempt"], row["failures"], row["error"]) == (
        "succeeded", 3, 2, None)
    assert [(s.step_no, s.status, s.output) for s in app.list_steps(handle.workflow_id)] == [
        (0, "done", 40), (1, "done", 41)]


def test_after_the_last_attempt_the_run_is_dead_and_app_requeue_revives_it(
    conn: Conn, app: pgdurable.App
) -> None:
    q = app.queue("q")
    healthy = threading.Event()
    attempts: list[int] = []
    prepared: list[int] = []

    @app.step()
    def prepare(n: int) -> int:
        prepared.append(n)
        return n

    @app.workflow(max_attempts=2, retry_backoff=0)
    def job(n: int) -> int:
        prepare(n)
        attempts.append(n)
        if not healthy.is_set():
            raise RuntimeError("downstream is down")
        return n * 3

    handle = q.enqueue(job, 5)
    with background_worker(app, "q"):
        wait_until(lambda: handle.status() == "failed", what="the run to fail for good")
    assert len(attempts) == 2
    with pytest.raises(WorkflowFailed, match="downstream is down"):
        handle.result(timeout=5)
    row = call(conn, "select status, failures, attempt from pgdurable.workflows")[0]
    assert (row["status"], row["failures"], row["attempt"]) == ("failed", 2, 2)
    assert [w.id for w in app.list_workflows(status="failed")] == [handle.workflow_id]
    assert drain(app, "q").started == 0  # dead: no worker picks it up again

    healthy.set()
    assert app.requeue(handle.workflow_id) == "pending"
    drain(app, "q")
    assert handle.result(timeout=5) == 15
    assert prepared == [5]
    assert app.requeue(handle.workflow_id) == "succeeded"  # nothing to do


def test_cli_lists_the_dead_run_and_resume_puts_it_back_on_its_queue(
    dsn: str, conn: Conn, app: pgdurable.App
) -> None:
    q = app.queue("q")
    healthy = threading.Event()

    @app.workflow()
    def job(n: int) -> int:
        if not healthy.is_set():
            raise RuntimeError("not yet")
        return n

    handle = q.enqueue(job, 9, workflow_id="job-9")
    drain(app, "q")
    assert handle.status() == "failed"

    listed = cli(dsn, "workflows", "list", "--status", "failed", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(w["id"], w["status"]) for w in json.loads(listed.stdout)] == [("job-9", "failed")]
    text = cli(dsn, "workflows", "list", "--status", "failed")
    assert "job-9" in text.stdout and "failed" in text.stdout

    resumed = cli(dsn, "workflows", "resume", "job-9")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip() == "job-9: pending"
    assert call(conn, "select workflow_id, queue from pgdurable.ready") == [
        {"workflow_id": "job-9", "queue": "q"}]
    healthy.set()
    drain(app, "q")
    assert handle.result(timeout=5) == 9


# -- the queues CLI ------------------------------------------------------------------------------


def test_queues_cli_lists_pauses_and_resumes(dsn: str, conn: Conn, app: pgdurable.App) -> None:
    q = app.queue("emails", concurrency=10, worker_concurrency=2,
                  rate_limit=RateLimit(100, per_seconds=1.0), partition_concurrency=3)

    @app.workflow()
    def send(n: int) -> int:
        return n

    handles = q.enqueue_many(send, [(1,), (2,)])

    listed = cli(dsn, "queues", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert set(rows) == {"default", "emails"}
    assert rows["emails"] == {
        "name": "emails", "paused": False, "concurrency": 10, "worker_concurrency": 2,
        "rate_limit": 100, "rate_period_seconds": 1.0, "partition_concurrency": 3,
        "ready": 2, "running": 0}
    text = cli(dsn, "queues")  # `list` is the default
    assert text.returncode == 0, text.stderr
    [line] = [ln for ln in text.stdout.splitlines() if ln.startswith("emails")]
    assert line.split()[:4] == ["emails", "active", "2", "0"]
    for limit in ("concurrency=10", "worker_concurrency=2", "rate=100/1s",
                  "partition_concurrency=3"):
        assert limit in line

    paused = cli(dsn, "queues", "pause", "emails")
    assert (paused.returncode, paused.stdout.strip()) == (0, "emails: paused"), paused.stderr
    assert json.loads(cli(dsn, "queues", "list", "--json").stdout)[1]["paused"] is True
    assert drain(app, "emails").started == 0
    assert [h.status() for h in handles] == ["pending", "pending"]

    resumed = cli(dsn, "queues", "resume", "emails")
    assert (resumed.returncode, resumed.stdout.strip()) == (0, "emails: active"), resumed.stderr
    assert drain(app, "emails").started == 2
    assert [h.result(timeout=5) for h in handles] == [1, 2]

    ghost = cli(dsn, "queues", "pause", "ghost")
    assert ghost.returncode != 0
    lines = ghost.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and "ghost" in lines[0]


# -- worker life cycle ---------------------------------------------------------------------------


def listeners(conn: Conn) -> int:
    row = conn.execute("select count(*) from pg_stat_activity where datname = current_database() "
                       "and query = 'listen pgdurable'").fetchone()
    return int(row[0]) if row else 0


def test_a_worker_that_returned_leaves_no_listener_behind(conn: Conn, app: pgdurable.App
                                                          ) -> None:
    app.queue("q")

    @app.workflow()
    def flow() -> None:
        return None

    before = set(threading.enumerate())
    worker = Worker(app, queues=["q"], poll_interval=0.02, exit_when_idle=True)
    worker.run()

    def listener_gone() -> bool:
        return not any(t.is_alive() and t.name == "pgdurable-listen"
                       for t in set(threading.enumerate()) - before)

    try:
        wait_until(listener_gone, timeout=2.5, what="the worker's listener thread to end")
        # The server notices the closed socket a moment after the client closed it.
        wait_until(lambda: listeners(conn) == 0, timeout=2.5,
                   what="the listener's backend to go away")
    finally:
        worker.stop()


class SlowClaimWorker(Worker):
    """A worker whose empty claims take a while to come back while it has runs in hand (a slow
    network), so a run can finish between its claim and its idle check."""

    def _claim(self, free: int) -> int:
        claimed = super()._claim(free)
        if claimed == 0 and self._active():
            time.sleep(0.6)
        return claimed


def test_exit_when_idle_does_not_leave_a_retry_behind(conn: Conn, app: pgdurable.App) -> None:
    q = app.queue("q")
    attempts: list[float] = []

    @app.workflow(max_attempts=2, retry_backoff=0)
    def job() -> int:
        attempts.append(time.monotonic())
        time.sleep(0.2)
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")
        return len(attempts)

    handle = q.enqueue(job)
    worker = SlowClaimWorker(app, queues=["q"], poll_interval=0.02, exit_when_idle=True)
    worker.run()
    worker.stop()
    assert handle.status() == "succeeded", f"left {handle.status()} after {len(attempts)} runs"
