"""The recovery sweep in SQL (0003_recovery.sql): expired leases with a recovery budget and dead
letters, wake-ups of due runs, retention, and `recover_sweep` tying them together. The clock is
moved with `pgdurable.now`, so nothing here sleeps."""

from __future__ import annotations

import json

import psycopg
import pytest

from tests.support.sql import (
    Conn,
    at,
    call,
    claim,
    claim_one,
    count,
    declare,
    enqueue,
    expire,
    finish,
    notifications,
    ready_ids,
    record,
    scalar,
    set_now,
    sqlstate,
    sweep,
    workflow,
)

COUNT_KEYS = {"requeued", "dead_lettered", "timed_out", "woken_queues", "scheduled",
              "schedule_errors", "purged"}


def claimed_and_expired(conn: Conn, wid: str, *, queue: str = "default", worker: str = "w-a",
                        lease: float = 10.0, claim_at: float = 0.0) -> int:
    """Claim `wid` at `claim_at` for `worker`, then move the clock past its lease. Returns the
    epoch the claim gave."""
    set_now(conn, at(claim_at))
    row = claim_one(conn, worker, queue, lease=lease)
    assert row["id"] == wid
    set_now(conn, at(claim_at + lease + 1))
    return int(row["epoch"])


# -- expired leases -------------------------------------------------------------------------------


def test_an_expired_lease_goes_back_to_the_queue_and_is_fenced(db: Conn) -> None:
    wid = enqueue(db, id="r1")
    row = claim_one(db, "w-a", lease=10)
    assert row["epoch"] == 1
    record(db, wid, 1, 0, "step", output="first")

    set_now(db, at(9.5))
    assert expire(db) == (0, 0)  # still leased
    assert workflow(db, wid)["status"] == "running"

    set_now(db, at(10.5))
    assert expire(db) == (1, 0)
    run = workflow(db, wid)
    assert (run["status"], run["owner"], run["lease_until"], run["recoveries"]) == (
        "pending", None, None, 1)
    assert run["available_at"] == at(10.5)
    assert ready_ids(db) == {wid}
    assert expire(db) == (0, 0)  # nothing left to do

    taken = claim_one(db, "w-b", lease=10)
    assert taken["epoch"] == 2  # a new fencing epoch
    assert taken["has_steps"] is True
    with sqlstate("PD001"):
        record(db, wid, 1, 1, "step", output="zombie")  # the old owner can no longer write
    record(db, wid, 2, 1, "step", output="second")
    finish(db, wid, 2, output="done")
    assert workflow(db, wid)["status"] == "succeeded"
    assert workflow(db, wid)["recoveries"] == 1


def test_dead_letter_once_the_queue_budget_is_used_up(db: Conn) -> None:
    declare(db, "fragile", max_recoveries=3)
    wid = enqueue(db, "fragile", id="crashy")
    for n in (1, 2):
        claimed_and_expired(db, wid, queue="fragile", claim_at=100.0 * n)
        assert expire(db) == (1, 0)
        assert workflow(db, wid)["recoveries"] == n
    epoch = claimed_and_expired(db, wid, queue="fragile", claim_at=300)
    assert epoch == 3
    assert expire(db) == (0, 1)

    run = workflow(db, wid)
    assert (run["status"], run["owner"], run["lease_until"], run["recoveries"]) == (
        "failed", None, None, 3)
    assert run["finished_at"] == at(311)
    assert run["error"]["type"] == "RecoveryLimitExceeded"
    assert "lost its worker 3 times" in run["error"]["message"]
    assert ready_ids(db) == set()
    assert claim(db, "w-z", "fragile") == []
    assert expire(db) == (0, 0)
    with sqlstate("PD001"):
        finish(db, wid, epoch)  # the last owner cannot resurrect it


def test_the_default_budget_is_ten_expiries(db: Conn) -> None:
    wid = enqueue(db, id="default-budget")
    outcomes = []
    for n in range(10):
        claimed_and_expired(db, wid, claim_at=100.0 * n)
        outcomes.append(expire(db))
    assert outcomes == [(1, 0)] * 9 + [(0, 1)]
    assert workflow(db, wid)["status"] == "failed"
    assert scalar(db, "select max_recoveries from pgdurable.queues where name = 'default'") == 10


def test_a_budget_of_one_dead_letters_at_the_first_expiry(db: Conn) -> None:
    declare(db, "once", max_recoveries=1)
    wid = enqueue(db, "once")
    claimed_and_expired(db, wid, queue="once")
    assert expire(db) == (0, 1)
    assert workflow(db, wid)["error"]["message"].startswith("the run lost its worker 1 times")


def test_a_requeued_dead_letter_gets_its_full_budget_again(db: Conn) -> None:
    declare(db, "twice", max_recoveries=2)
    wid = enqueue(db, "twice")
    for n in range(2):
        claimed_and_expired(db, wid, queue="twice", claim_at=100.0 * n)
        expire(db)
    assert workflow(db, wid)["status"] == "failed"
    assert scalar(db, "select pgdurable.requeue(%s)", (wid,)) == "pending"
    assert workflow(db, wid)["recoveries"] == 0  # documented: requeue resets the count
    claimed_and_expired(db, wid, queue="twice", claim_at=500)
    assert expire(db) == (1, 0)
    claimed_and_expired(db, wid, queue="twice", claim_at=600)
    assert expire(db) == (0, 1)


@pytest.mark.parametrize("bad", [0, -1, None])
def test_declare_queue_recoveries_refuses_a_budget_below_one(db: Conn, bad: int | None) -> None:
    with sqlstate("PD006"):
        db.execute("select pgdurable.declare_queue_recoveries('default', %s)", (bad,))
    assert scalar(db, "select max_recoveries from pgdurable.queues where name = 'default'") == 10


def test_declare_queue_recoveries_refuses_an_unknown_queue(db: Conn) -> None:
    with sqlstate("PD007"):
        db.execute("select pgdurable.declare_queue_recoveries('no-such-queue', 3)")


def test_redeclaring_a_queue_keeps_its_recovery_budget(db: Conn) -> None:
    declare(db, "reports", max_recoveries=2)
    db.execute("select pgdurable.declare_queue('reports', p_concurrency => 5)")
    assert scalar(db, "select max_recoveries from pgdurable.queues where name = 'reports'") == 2


def test_expire_leases_filters_queues_and_takes_the_oldest_leases_first(db: Conn) -> None:
    declare(db, "q1")
    declare(db, "q2")
    ids = {q: [enqueue(db, q, id=f"{q}-{i}") for i in range(3)] for q in ("q1", "q2")}
    for i in range(3):  # leases end at 10, 11, 12 (q1) and 10.5, 11.5, 12.5 (q2)
        set_now(db, at(i))
        claim_one(db, "w", "q1", lease=10)
        set_now(db, at(i + 0.5))
        claim_one(db, "w", "q2", lease=10)
    set_now(db, at(100))
    assert expire(db, ["q2"], limit=100) == (3, 0)
    assert {workflow(db, w)["status"] for w in ids["q2"]} == {"pending"}
    assert {workflow(db, w)["status"] for w in ids["q1"]} == {"running"}
    assert expire(db, None, limit=2) == (2, 0)
    assert [workflow(db, w)["status"] for w in ids["q1"]] == ["pending", "pending", "running"]
    assert expire(db, [], limit=100) == (0, 0)  # no queue at all
    assert expire(db, None, limit=100) == (1, 0)


def test_expire_leases_skips_a_run_locked_by_another_transaction(dsn: str, db: Conn) -> None:
    wid = enqueue(db)
    claimed_and_expired(db, wid)
    with psycopg.connect(dsn) as other:
        other.execute("select 1 from pgdurable.workflows where id = %s for update", (wid,))
        assert expire(db) == (0, 0)  # skipped, not waited for
        other.rollback()
    assert expire(db) == (1, 0)


def test_a_renewed_lease_is_not_expired(db: Conn) -> None:
    wid = enqueue(db)
    claim_one(db, "w-a", lease=10)
    set_now(db, at(8))
    assert scalar(db, "select pgdurable.heartbeat('w-a', %s, 10)", ([wid],)) == 1
    set_now(db, at(15))
    assert expire(db) == (0, 0)
    set_now(db, at(18.5))
    assert expire(db) == (1, 0)


def test_requeue_expired_counts_requeued_and_dead_lettered_runs(db: Conn) -> None:
    declare(db, "once", max_recoveries=1)
    enqueue(db, "once", id="a")
    enqueue(db, "default", id="b")
    claim_one(db, "w", "once", lease=5)
    claim_one(db, "w", "default", lease=5)
    set_now(db, at(6))
    assert scalar(db, "select pgdurable.requeue_expired(null, 10)") == 2
    assert (workflow(db, "a")["status"], workflow(db, "b")["status"]) == ("failed", "pending")


# -- wake-ups of due runs -------------------------------------------------------------------------


def test_the_sweep_wakes_queues_whose_runs_became_due(dsn: str, db: Conn) -> None:
    declare(db, "later")
    declare(db, "idle")
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("listen pgdurable")
        enqueue(db, "later", id="delayed", delay_seconds=30)
        assert notifications(listener) == []  # a delayed enqueue sends no wake-up

        assert sweep(db)["woken_queues"] == 0  # first sweep: nothing due
        set_now(db, at(20))
        assert sweep(db)["woken_queues"] == 0
        set_now(db, at(31))
        assert sweep(db)["woken_queues"] == 1
        assert notifications(listener, timeout=5, expect=1) == ["later"]
        set_now(db, at(40))
        assert sweep(db)["woken_queues"] == 0  # it was due before the previous sweep
        assert notifications(listener) == []


def test_runs_requeued_by_a_sweep_wake_their_queue(dsn: str, db: Conn) -> None:
    declare(db, "work")
    enqueue(db, "work", id="r")
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("listen pgdurable")
        sweep(db)
        claimed_and_expired(db, "r", queue="work", lease=5, claim_at=1)
        notifications(listener)  # drop anything from before
        counts = sweep(db)
        assert (counts["requeued"], counts["woken_queues"]) == (1, 1)
        assert notifications(listener, timeout=5, expect=1) == ["work"]


def test_a_requeued_run_wakes_its_queue_once(conn: Conn) -> None:
    """On the wall clock (a frozen clock hides it)."""
    enqueue(conn, id="r")
    claim_one(conn, "w", lease=0.001)
    conn.execute("select pg_sleep(0.01)")
    first = sweep(conn)
    assert (first["requeued"], first["woken_queues"]) == (1, 1)
    assert sweep(conn)["woken_queues"] == 0


def test_a_first_sweep_looks_one_minute_back(dsn: str, db: Conn) -> None:
    enqueue(db, id="soon", delay_seconds=5)  # due at 5
    set_now(db, at(50))
    assert sweep(db)["woken_queues"] == 1
    with psycopg.connect(dsn, autocommit=True) as fresh:  # a database never swept before
        fresh.execute("delete from pgdurable.sweeps")
        set_now(fresh, at(70))  # due more than a minute ago: workers' polling found it
        assert sweep(fresh)["woken_queues"] == 0


# -- retention ------------------------------------------------------------------------------------


def finished_run(conn: Conn, wid: str, status: str, finished_at: float) -> None:
    """A run with two recorded steps that ended `status` at `finished_at`."""
    set_now(conn, at(finished_at - 1))
    enqueue(conn, id=wid)
    row = claim_one(conn, "w")
    assert row["id"] == wid
    record(conn, wid, row["epoch"], 0, "step", output="a")
    record(conn, wid, row["epoch"], 1, "step", output="b")
    set_now(conn, at(finished_at))
    if status == "cancelled":
        assert scalar(conn, "select pgdurable.cancel(%s)", (wid,)) == "cancelled"
    else:
        finish(conn, wid, row["epoch"], status)


def purge(conn: Conn, older_than: float | None, limit: int = 100) -> int:
    return int(scalar(conn, "select pgdurable.purge(%s, %s)", (older_than, limit)))


def test_purge_deletes_old_finished_runs_with_their_steps(db: Conn) -> None:
    finished_run(db, "old-ok", "succeeded", 10)
    finished_run(db, "old-failed", "failed", 20)
    finished_run(db, "old-cancelled", "cancelled", 30)
    finished_run(db, "young", "succeeded", 900)
    set_now(db, at(950))
    enqueue(db, id="pending-old")
    set_now(db, at(951))
    running = claim_one(db, "w")
    record(db, running["id"], running["epoch"], 0, "step", output="x")
    assert count(db, "pgdurable.steps") == 9

    set_now(db, at(1000))
    assert purge(db, 500) == 3
    left = {r[0] for r in db.execute("select id from pgdurable.workflows")}
    assert left == {"young", "pending-old"}
    steps = {r[0] for r in db.execute("select distinct workflow_id from pgdurable.steps")}
    assert steps == {"young", "pending-old"}
    assert purge(db, 500) == 0

    set_now(db, at(100_000))  # unfinished runs are never purged, however old
    assert purge(db, 1) == 1
    assert {r[0] for r in db.execute("select id from pgdurable.workflows")} == {"pending-old"}
    assert count(db, "pgdurable.ready") == 0


def test_purge_works_in_batches_oldest_first(db: Conn) -> None:
    for i in range(5):
        finished_run(db, f"run-{i}", "succeeded", 10.0 * (5 - i))  # run-4 finished first
    set_now(db, at(1000))
    assert purge(db, 1, limit=2) == 2
    assert {r[0] for r in db.execute("select id from pgdurable.workflows")} == {
        "run-0", "run-1", "run-2"}
    assert purge(db, 1, limit=2) == 2
    assert purge(db, 1, limit=2) == 1
    assert purge(db, 1, limit=2) == 0


@pytest.mark.parametrize("bad", [0.0, -1.0, None, float("inf"), float("nan")])
def test_purge_refuses_a_retention_that_is_not_positive_and_finite(
    db: Conn, bad: float | None
) -> None:
    finished_run(db, "kept", "succeeded", 1)
    set_now(db, at(10_000))
    with sqlstate("PD006"):
        purge(db, bad)
    assert count(db, "pgdurable.workflows") == 1


# -- the sweep ------------------------------------------------------------------------------------


def test_recover_sweep_returns_all_counts_as_json(db: Conn) -> None:
    declare(db, "once", max_recoveries=1)
    enqueue(db, "once", id="dies")
    enqueue(db, "default", id="comes-back")
    claim_one(db, "w", "once", lease=5)
    claim_one(db, "w", "default", lease=5)
    finished_run(db, "ancient", "succeeded", 2)
    set_now(db, at(200))
    counts = sweep(db, limit=10, retention=100)
    assert counts == {"requeued": 1, "dead_lettered": 1, "timed_out": 0, "woken_queues": 1,
                      "scheduled": 0, "schedule_errors": 0, "purged": 1}
    assert set(counts) == COUNT_KEYS
    json.dumps(counts)
    assert scalar(db, "select last_sweep_at from pgdurable.sweeps") == at(200)
    assert sweep(db, limit=10, retention=100) == dict.fromkeys(COUNT_KEYS, 0)


def test_each_part_of_a_sweep_is_bounded_by_the_limit(db: Conn) -> None:
    for i in range(5):
        enqueue(db, id=f"r{i}")
    assert len(claim(db, "w", "default", 10, lease=5)) == 5
    for i in range(5):
        finished_run(db, f"done-{i}", "succeeded", 1)
    set_now(db, at(100))
    sweeps = [sweep(db, limit=2, retention=10) for _ in range(4)]
    assert [s["requeued"] for s in sweeps] == [2, 2, 1, 0]
    assert [s["purged"] for s in sweeps] == [2, 2, 1, 0]


@pytest.mark.parametrize(("limit", "retention"), [
    (0, 100.0), (-5, 100.0), (None, 100.0), (10, 0.0), (10, -1.0), (10, None),
    (10, float("nan")), (10, float("inf")),
])
def test_recover_sweep_refuses_bad_arguments_and_changes_nothing(
    db: Conn, limit: int | None, retention: float | None
) -> None:
    enqueue(db, id="r")
    claim_one(db, "w", lease=5)
    set_now(db, at(100))
    with sqlstate("PD006"):
        db.execute("select pgdurable.recover_sweep(%s, %s)", (limit, retention))
    assert workflow(db, "r")["status"] == "running"  # the whole sweep rolled back
    assert count(db, "pgdurable.sweeps") == 0


def test_concurrent_sweeps_do_not_double_count(dsn: str, db: Conn) -> None:
    """Two sweeps at once (a standby daemon and pg_cron, say): every expired run is requeued
    by exactly one of them."""
    for i in range(40):
        enqueue(db, id=f"r{i:02d}")
    assert len(claim(db, "w", "default", 40, lease=5)) == 40
    with psycopg.connect(dsn, autocommit=True) as other:
        set_now(other, at(100))
        set_now(db, at(100))
        db.execute("begin")
        first = sweep(db, limit=25)  # holds the sweep row and 25 run locks until commit
        other.execute("set lock_timeout = '50ms'")
        with sqlstate("55P03"):  # the second sweep waits for the first (then sees its work)
            sweep(other, limit=25)
        db.execute("commit")
        other.execute("set lock_timeout = 0")
        second = sweep(other, limit=25)
    assert first["requeued"] + second["requeued"] == 40
    assert call(db, "select count(*) as n from pgdurable.workflows where status = 'pending' "
                    "and recoveries = 1")[0]["n"] == 40
