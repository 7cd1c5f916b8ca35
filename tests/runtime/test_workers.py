"""Real `pgdurable worker` processes sharing queues (the App is tests/support/apps/qapp.py).

Flow control is checked on what actually happened: each execution records its interval
(server clock) in `qruns`, and the claim time of each run is `workflows.started_at`.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

import pgdurable
from pgdurable.store.database import translate
from tests.support.processes import Piped, processes, worker_process
from tests.support.sql import call, declare, enqueue
from tests.support.waiting import wait_until

Conn = psycopg.Connection[Any]
APP = "apps.qapp:app"

# The tables the workflows of apps/qapp.py write to.
QAPP_SCHEMA = """
create table qruns (
    id bigserial primary key, workflow_id text not null, pid integer not null,
    started timestamptz not null, ended timestamptz);
create table qflags (tag text primary key);
"""

# The queues apps/qapp.py declares, with the same limits.
QUEUES: dict[str, dict[str, Any]] = {
    "limited": {"concurrency": 2},
    "parts": {"partition_concurrency": 2},
    "rated": {"rate_limit": 4, "rate_period_seconds": 0.5},
    "work": {},
}


@pytest.fixture
def db(dsn: str, conn: Conn) -> Iterator[Conn]:
    """The test database with qapp's tables and queues; `conn` is autocommit."""
    conn.execute(QAPP_SCHEMA)
    for name, limits in QUEUES.items():
        declare(conn, name, **limits)
    yield conn


@pytest.fixture
def procs() -> Iterator[list[Piped]]:
    with processes() as started:
        yield started


def start(procs: list[Piped], dsn: str, *args: str, **env: str) -> Piped:
    proc = worker_process(dsn, APP, *args, **env)
    procs.append(proc)
    return proc


def max_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    """The largest number of half-open intervals [start, end) covering one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals],
                    key=lambda ev: (ev[0], ev[1]))  # ends before starts at the same instant
    best = current = 0
    for _, delta in events:
        current += delta
        best = max(best, current)
    return best


def max_in_window(starts: list[datetime], seconds: float) -> int:
    """The largest number of starts in any half-open window [t, t + seconds)."""
    ordered = sorted(starts)
    width = timedelta(seconds=seconds)
    best = 0
    j = 0
    for i, start in enumerate(ordered):
        j = max(j, i)
        while j < len(ordered) and ordered[j] < start + width:
            j += 1
        best = max(best, j - i)
    return best


def enqueue_runs(conn: Conn, queue: str, name: str, args_list: list[list[Any]],
                 **options: Any) -> list[str]:
    """Enqueue in one transaction (one NOTIFY), as `enqueue_many` would; returns the ids."""
    with conn.transaction():
        return [enqueue(conn, queue, name, inputs={"args": a, "kwargs": {}}, **options)
                for a in args_list]


def statuses(conn: Conn, ids: list[str]) -> dict[str, str]:
    rows = call(conn, "select id, status from pgdurable.workflows where id = any(%s)", (ids,))
    return {r["id"]: r["status"] for r in rows}


def all_succeeded(conn: Conn, ids: list[str]) -> bool:
    return set(statuses(conn, ids).values()) == {"succeeded"}


def wait_succeeded(conn: Conn, wid: str, timeout: float = 10.0) -> None:
    wait_until(lambda: statuses(conn, [wid]).get(wid) == "succeeded", timeout=timeout,
               what=f"run {wid} to succeed")


def listening(conn: Conn) -> int:
    """How many worker listeners are connected (each worker holds one)."""
    row = conn.execute("select count(*) from pg_stat_activity where datname = current_database() "
                       "and query = 'listen pgdurable'").fetchone()
    return int(row[0]) if row else 0


def executions(conn: Conn, ids: list[str] | None = None) -> list[dict[str, Any]]:
    return call(conn, "select workflow_id, pid, started, ended from qruns "
                      "where %(ids)s::text[] is null or workflow_id = any(%(ids)s) order by id",
                {"ids": ids})


def intervals(rows: list[dict[str, Any]]) -> list[tuple[datetime, datetime]]:
    assert all(r["ended"] is not None for r in rows)
    return [(r["started"], r["ended"]) for r in rows]


def run_to_completion(conn: Conn, ids: list[str], timeout: float = 40.0) -> None:
    """Wait until every run succeeded."""
    wait_until(lambda: all_succeeded(conn, ids), timeout=timeout, what="all runs to succeed")


# -- flow control across processes ---------------------------------------------------------------


def test_global_concurrency_across_three_worker_processes(dsn: str, db: Conn,
                                                          procs: list[Piped]) -> None:
    # Three slots for a limit of two, so the limit (not the workers' own capacity) decides,
    # and the two running runs are always held by two different processes. (With more slots
    # per worker, the worker that finishes a run re-claims the freed slot before the idle ones
    # poll, so one process tends to hold both.)
    for _ in range(3):
        start(procs, dsn, "--queue", "limited", "--concurrency", "1", "--poll-interval", "0.05")
    wait_until(lambda: listening(db) == 3, what="three workers listening")
    ids = enqueue_runs(db, "limited", "qapp.interval", [[0.15]] * 24)
    most_running = 0
    deadline = time.monotonic() + 40
    while not all_succeeded(db, ids):
        assert time.monotonic() < deadline, statuses(db, ids)
        row = db.execute("select count(*) from pgdurable.workflows "
                         "where queue = 'limited' and status = 'running'").fetchone()
        most_running = max(most_running, int(row[0]) if row else 0)
        time.sleep(0.005)
    assert most_running <= 2
    rows = executions(db, ids)
    assert len(rows) == 24  # each run executed once
    assert max_overlap(intervals(rows)) == 2  # 3 slots, but never more than 2 at once
    assert len({r["pid"] for r in rows}) >= 2, "the workers did not share the queue"
    assert {r["pid"] for r in rows} <= {p.pid for p in procs}


def test_partition_concurrency_across_worker_processes(dsn: str, db: Conn,
                                                       procs: list[Piped]) -> None:
    for _ in range(3):
        start(procs, dsn, "--queue", "parts", "--concurrency", "4", "--poll-interval", "0.05")
    wait_until(lambda: listening(db) == 3, what="three workers listening")
    keys = ["A", "B", "C"]
    ids: dict[str, list[str]] = {}
    with db.transaction():
        for key in keys:
            ids[key] = [enqueue(db, "parts", "qapp.interval",
                                inputs={"args": [0.25], "kwargs": {}}, partition_key=key)
                        for _ in range(6)]
    everything = [i for key in keys for i in ids[key]]
    run_to_completion(db, everything)
    rows = executions(db, everything)
    assert len(rows) == 18
    for key in keys:
        per_key = [r for r in rows if r["workflow_id"] in ids[key]]
        assert max_overlap(intervals(per_key)) <= 2, key
    assert max_overlap(intervals(rows)) >= 3, "keys should run side by side"


def test_rate_limit_across_worker_processes(dsn: str, db: Conn, procs: list[Piped]
                                            ) -> None:
    for _ in range(3):
        start(procs, dsn, "--queue", "rated", "--concurrency", "8", "--poll-interval", "0.02")
    wait_until(lambda: listening(db) == 3, what="three workers listening")
    ids = enqueue_runs(db, "rated", "qapp.interval", [[0.01]] * 16)
    run_to_completion(db, ids)
    # started_at is the claim time the rate limit accounts with (the same clock reading).
    starts = [r["started_at"] for r in call(
        db, "select started_at from pgdurable.workflows where id = any(%s)", (ids,))]
    assert max_in_window(starts, 0.5) == 4  # never more than 4 in any 0.5 s window
    assert (max(starts) - min(starts)).total_seconds() >= 1.5


def test_priority_order_with_one_worker_of_concurrency_one(dsn: str, db: Conn,
                                                           procs: list[Piped]) -> None:
    plan = [("p5-a", 5), ("p0-a", 0), ("p9", 9), ("p0-b", 0), ("p-1", -1), ("p5-b", 5)]
    for wid, priority in plan:
        enqueue(db, "work", "qapp.interval", inputs={"args": [0], "kwargs": {}}, id=wid,
                priority=priority)
    worker = start(procs, dsn, "--queue", "work", "--concurrency", "1", "--exit-when-idle")
    code, _, err = worker.wait()
    assert code == 0, err
    order = [r["id"] for r in call(db, "select id from pgdurable.workflows "
                                       "order by started_at, id")]
    assert order == ["p-1", "p0-a", "p0-b", "p5-a", "p5-b", "p9"]
    assert set(statuses(db, order).values()) == {"succeeded"}


def test_exit_when_idle_on_an_empty_queue(dsn: str, db: Conn, procs: list[Piped]) -> None:
    worker = start(procs, dsn, "--queue", "work", "--exit-when-idle", "--poll-interval", "5")
    code, _, err = worker.wait(timeout=20)
    assert code == 0, err
    assert "0 runs claimed" in err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_an_idle_worker_exits_0_on_sigterm_and_sigint(dsn: str, db: Conn,
                                                      procs: list[Piped],
                                                      signum: signal.Signals) -> None:
    worker = start(procs, dsn, "--queue", "work", "--poll-interval", "5")
    wait_until(lambda: listening(db) == 1, what="the worker to listen")
    started = time.monotonic()
    worker.proc.send_signal(signum)
    code, _, err = worker.wait(timeout=20)
    assert code == 0, err
    assert time.monotonic() - started < 4, "the worker waited out its poll interval"


# -- crashes, shutdown, fencing ------------------------------------------------------------------


def test_sigkill_a_worker_and_another_takes_its_runs_over(dsn: str, db: Conn,
                                                          procs: list[Piped]) -> None:
    lease = {"QAPP_LEASE_SECONDS": "1.0"}
    ids = enqueue_runs(db, "work", "qapp.hold", [["go"]] * 4)
    a = start(procs, dsn, "--queue", "work", "--concurrency", "4", "--poll-interval", "0.1",
              **lease)
    wait_until(lambda: len(executions(db)) == 4, what="worker A to start the 4 runs")
    b = start(procs, dsn, "--queue", "work", "--concurrency", "4", "--poll-interval", "0.1",
              **lease)
    wait_until(lambda: listening(db) == 2, what="worker B to be up")
    # A is alive: its heartbeats keep the 1 s leases, so B takes nothing.
    time.sleep(2.0)
    assert {r["pid"] for r in executions(db)} == {a.pid}
    assert {r["attempt"] for r in call(db, "select attempt from pgdurable.workflows")} == {1}

    a.kill()
    killed_at = time.monotonic()
    wait_until(lambda: len([r for r in executions(db) if r["pid"] == b.pid]) == 4, timeout=20,
               what="worker B to take the 4 runs over")
    assert time.monotonic() - killed_at >= 0.5  # not before A's lease ran out
    rows = call(db, "select id, status, attempt, owner from pgdurable.workflows")
    assert {(r["status"], r["attempt"]) for r in rows} == {("running", 2)}
    assert len({r["owner"] for r in rows}) == 1

    # A zombie of A (epoch 1) can no longer write anything.
    app = pgdurable.App(dsn)
    try:
        for wid in ids:
            with pytest.raises(pgdurable.FencedError):
                app.db.fetch_one("record_step", {
                    "id": wid, "epoch": 1, "step_no": 0, "name": "stale", "status": "done",
                    "output": Jsonb("zombie"), "error": None})
    finally:
        app.close()
    for wid in ids:
        with pytest.raises(psycopg.Error) as info:
            db.execute("select pgdurable.finish_workflow(%s, 1, 'succeeded', '0', null)",
                       (wid,))
        assert info.value.sqlstate == "PD001"
        assert isinstance(translate(info.value), pgdurable.FencedError)

    db.execute("insert into qflags values ('go')")
    run_to_completion(db, ids)
    rows = call(db, "select output, attempt from pgdurable.workflows")
    assert {(r["output"], r["attempt"]) for r in rows} == {(b.pid, 2)}
    by_a = [r for r in executions(db) if r["pid"] == a.pid]
    assert len(by_a) == 4 and all(r["ended"] is None for r in by_a)  # died mid-run
    assert call(db, "select count(*) as n from pgdurable.steps")[0]["n"] == 0


def test_sigterm_releases_runs_that_outlive_the_grace_period(dsn: str, db: Conn,
                                                             procs: list[Piped]) -> None:
    enqueue_runs(db, "work", "qapp.hold", [["go"]] * 3)
    a = start(procs, dsn, "--queue", "work", "--concurrency", "4", "--grace-seconds", "0.3")
    wait_until(lambda: len(executions(db)) == 3, what="worker A to start the runs")
    a.proc.send_signal(signal.SIGTERM)
    code, _, err = a.wait(timeout=20)
    assert code == 0, err
    assert "3 released" in err
    # Given back: nothing is left `running` under a dead owner.
    rows = call(db, "select status, owner, lease_until, attempt from pgdurable.workflows")
    assert {(r["status"], r["owner"], r["lease_until"], r["attempt"]) for r in rows} == {
        ("pending", None, None, 1)}
    assert call(db, "select count(*) as n from pgdurable.ready")[0]["n"] == 3

    db.execute("insert into qflags values ('go')")
    b = start(procs, dsn, "--queue", "work", "--exit-when-idle")
    code, _, err = b.wait(timeout=30)
    assert code == 0, err
    rows = call(db, "select status, output, attempt from pgdurable.workflows")
    assert {(r["status"], r["output"], r["attempt"]) for r in rows} == {
        ("succeeded", b.pid, 2)}


def test_sigterm_lets_runs_finish_within_the_grace_period(dsn: str, db: Conn,
                                                          procs: list[Piped]) -> None:
    ids = enqueue_runs(db, "work", "qapp.hold", [["go"]] * 3)
    a = start(procs, dsn, "--queue", "work", "--concurrency", "4", "--grace-seconds", "30")
    wait_until(lambda: len(executions(db)) == 3, what="worker A to start the runs")
    a.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert a.proc.poll() is None, "the worker left before its runs finished"
    enqueue(db, "work", "qapp.interval", id="late", inputs={"args": [0], "kwargs": {}})
    db.execute("insert into qflags values ('go')")
    code, _, err = a.wait(timeout=30)
    assert code == 0, err
    assert "0 released" in err
    rows = call(db, "select id, status, output, attempt from pgdurable.workflows")
    assert {r["id"]: (r["status"], r["output"], r["attempt"]) for r in rows} == {
        **{wid: ("succeeded", a.pid, 1) for wid in ids},
        "late": ("pending", None, 0),  # a stopping worker claims nothing new
    }


# -- wake-ups ------------------------------------------------------------------------------------


def test_an_idle_worker_starts_new_work_on_notify_not_on_its_poll(dsn: str, db: Conn,
                                                                  procs: list[Piped]) -> None:
    start(procs, dsn, "--queue", "work", "--poll-interval", "5")
    wait_until(lambda: listening(db) == 1, what="the worker to listen")
    time.sleep(0.3)  # let its start-up claims pass: it is now idle in a 5 s poll wait
    for i in range(3):
        wid = enqueue(db, "work", "qapp.interval", inputs={"args": [0], "kwargs": {}},
                      id=f"r{i}")
        wait_succeeded(db, wid)
        row = call(db, "select started_at - created_at as latency from pgdurable.workflows "
                       "where id = %s", (wid,))[0]
        assert row["latency"].total_seconds() < 1.0, row["latency"]


# -- workflows a worker does not register, bad start-up ------------------------------------------


def test_a_worker_leaves_runs_it_cannot_run_for_one_that_can(dsn: str, db: Conn,
                                                             procs: list[Piped]) -> None:
    unknown = enqueue(db, "work", "qapp.only_full", inputs={"args": [21], "kwargs": {}},
                      priority=-1)
    known = enqueue(db, "work", "qapp.interval", inputs={"args": [0], "kwargs": {}})
    partial = worker_process(dsn, "apps.qapp_partial:app", "--queue", "work", "--exit-when-idle")
    procs.append(partial)
    code, _, err = partial.wait()
    assert code == 0, err
    assert statuses(db, [known, unknown]) == {known: "succeeded", unknown: "pending"}
    row = call(db, "select attempt, owner from pgdurable.workflows where id = %s",
               (unknown,))[0]
    assert (row["attempt"], row["owner"]) == (0, None)  # never claimed

    full = start(procs, dsn, "--queue", "work", "--exit-when-idle")
    code, _, err = full.wait()
    assert code == 0, err
    row = call(db, "select status, output from pgdurable.workflows where id = %s",
               (unknown,))[0]
    assert (row["status"], row["output"]) == ("succeeded", 42)


@pytest.mark.parametrize(("app_path", "message"), [
    ("no_such_module_xyz:app", "cannot import"),
    ("apps.qapp:nothing_here", "is not a pgdurable.App"),
    ("apps.qapp:DSN", "is not a pgdurable.App"),
    ("apps.broken:app", "broken on purpose"),
])
def test_a_bad_app_path_is_a_one_line_error(dsn: str, db: Conn, procs: list[Piped],
                                            app_path: str, message: str) -> None:
    worker = worker_process(dsn, app_path, "--exit-when-idle")
    procs.append(worker)
    code, out, err = worker.wait()
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("Error:") and message in lines[0], err
    assert "Traceback" not in err + out


def test_an_unknown_queue_is_a_one_line_error(dsn: str, db: Conn, procs: list[Piped]
                                              ) -> None:
    worker = start(procs, dsn, "--queue", "work", "--queue", "ghost", "--exit-when-idle")
    code, _, err = worker.wait()
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and "ghost" in lines[0], err
