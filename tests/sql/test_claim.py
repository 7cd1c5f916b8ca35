"""The queue functions of migration 0002, called directly, with the clock moved by hand.

`pgdurable.now()` reads the `pgdurable.now` setting, so delays, leases, retries and rate-limit
windows are tested at exact instants without sleeping.

Most tests run inside one transaction on a database shared by this module and roll it back at
the end (cloning a database per test would dominate the runtime); expected errors run in
savepoints. Tests that need commits (NOTIFY, concurrent claimers) get a fresh database; races
between two claimers are written as explicit interleavings (tests/support/interleave.py).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

from tests.support.interleave import Interleaving
from tests.support.sql import (
    T0,
    Conn,
    at,
    call,
    claim,
    claim_ids,
    count,
    declare,
    enqueue,
    enqueue_many,
    finish,
    ready_ids,
    record,
    requeue_expired,
    set_now,
    sqlstate,
    workflow,
)

ERROR = {"type": "RuntimeError", "message": "boom", "traceback": ""}


@pytest.fixture(scope="module")
def shared_dsn(server_dsn: str, template_db: str) -> Iterator[str]:
    name = f"pgd_queues_sql_{os.getpid()}"
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(f"drop database if exists {name}")
        admin.execute(f"create database {name} template {template_db}")
    yield make_conninfo(server_dsn, dbname=name)
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(f"drop database if exists {name} with (force)")


@pytest.fixture
def conn(shared_dsn: str) -> Iterator[Conn]:
    """A connection in a transaction that is rolled back after the test; clock at T0."""
    with psycopg.connect(shared_dsn) as connection:
        set_now(connection, T0)
        yield connection
        connection.rollback()


@pytest.fixture
def live(dsn: str) -> Iterator[Conn]:
    """An autocommit connection to a fresh database; clock at T0."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        set_now(connection, T0)
        yield connection


def requeue(conn: Conn, wid: str) -> str:
    return str(call(conn, "select pgdurable.requeue(%s) as s", (wid,))[0]["s"])


def release(conn: Conn, wid: str, epoch: int) -> None:
    conn.execute("select pgdurable.release(%s, %s)", (wid, epoch))


def steps(conn: Conn, wid: str) -> list[tuple[int, str, str]]:
    rows = call(conn, "select step_no, name, status from pgdurable.steps "
                      "where workflow_id = %s order by step_no", (wid,))
    return [(r["step_no"], r["name"], r["status"]) for r in rows]


def running(conn: Conn, queue: str) -> int:
    return int(call(conn, "select count(*) as n from pgdurable.workflows "
                          "where queue = %s and status = 'running'", (queue,))[0]["n"])


# -- order: priority, FIFO, delay ---------------------------------------------------------------


def test_claim_takes_lower_priority_first_then_fifo(conn: Conn) -> None:
    declare(conn, "q")
    for wid, priority in [("a5", 5), ("b0", 0), ("c5", 5), ("d-1", -1), ("e0", 0), ("f5", 5)]:
        enqueue(conn, "q", id=wid, priority=priority)
    assert claim_ids(conn, "w1", "q", 3) == ["d-1", "b0", "e0"]
    assert claim_ids(conn, "w1", "q", 1) == ["a5"]
    assert claim_ids(conn, "w1", "q", 10) == ["c5", "f5"]
    assert claim_ids(conn, "w1", "q", 10) == []


def test_fifo_follows_enqueue_order_not_ids(conn: Conn) -> None:
    declare(conn, "q")
    order = ["zz", "aa", "mm", "bb"]
    for wid in order:
        enqueue(conn, "q", id=wid)
    assert [claim_ids(conn, "w1", "q", 1)[0] for _ in order] == order


def test_delay_makes_a_run_claimable_exactly_at_available_at(conn: Conn) -> None:
    declare(conn, "q")
    wid = enqueue(conn, "q", id="later", delay_seconds=10)
    assert workflow(conn, wid)["available_at"] == at(10)
    assert workflow(conn, wid)["status"] == "pending"
    set_now(conn, at(9.999999))
    assert claim_ids(conn, "w1", "q") == []
    set_now(conn, at(10))
    rows = claim(conn, "w1", "q")
    assert [(r["id"], r["epoch"], r["has_steps"]) for r in rows] == [("later", 1, False)]
    assert workflow(conn, wid)["started_at"] == at(10)


def test_a_due_run_goes_before_one_enqueued_earlier_but_due_later(conn: Conn) -> None:
    declare(conn, "q")
    enqueue(conn, "q", id="delayed", delay_seconds=5)
    set_now(conn, at(1))
    enqueue(conn, "q", id="now")
    set_now(conn, at(6))
    assert claim_ids(conn, "w1", "q") == ["now", "delayed"]


# -- pause / resume ------------------------------------------------------------------------------


@pytest.mark.parametrize("limits", [{}, {"concurrency": 5}], ids=["unlimited", "limited"])
def test_a_paused_queue_hands_out_nothing_until_resumed(conn: Conn, limits: dict[str, Any]
                                                        ) -> None:
    declare(conn, "q", **limits)
    enqueue(conn, "q", id="r1")
    assert call(conn, "select pgdurable.set_queue_paused('q', true) as p")[0]["p"] is True
    assert claim_ids(conn, "w1", "q") == []
    stats = {r["name"]: r for r in call(conn, "select * from pgdurable.queue_stats()")}
    assert stats["q"]["paused"] is True and stats["q"]["ready"] == 1
    # Redeclaring (a deploy, possibly with new limits) keeps the operator's pause.
    declare(conn, "q", concurrency=7)
    assert claim_ids(conn, "w1", "q") == []
    assert call(conn, "select pgdurable.set_queue_paused('q', false) as p")[0]["p"] is False
    assert claim_ids(conn, "w1", "q") == ["r1"]


def test_pausing_an_unknown_queue_is_pd007(conn: Conn) -> None:
    with sqlstate("PD007", conn):
        conn.execute("select pgdurable.set_queue_paused('ghost', true)")


def test_claim_serves_several_queues_and_ignores_unknown_ones(conn: Conn) -> None:
    declare(conn, "a")
    declare(conn, "b")
    enqueue(conn, "a", id="in-a")
    enqueue(conn, "b", id="in-b")
    assert set(claim_ids(conn, "w1", ["a", "b", "ghost"])) == {"in-a", "in-b"}


# -- concurrency limits --------------------------------------------------------------------------


def test_global_concurrency_caps_running_runs_across_workers(conn: Conn) -> None:
    declare(conn, "q", concurrency=3)
    for i in range(6):
        enqueue(conn, "q", id=f"r{i}")
    assert claim_ids(conn, "w1", "q", 2) == ["r0", "r1"]
    assert claim_ids(conn, "w2", "q", 5) == ["r2"]
    assert claim_ids(conn, "w3", "q", 5) == []
    assert running(conn, "q") == 3
    finish(conn, "r1", 1)
    assert claim_ids(conn, "w3", "q", 5) == ["r3"]
    assert claim_ids(conn, "w1", "q", 5) == []
    assert running(conn, "q") == 3


def test_global_concurrency_holds_under_simultaneous_claims(dsn: str, live: Conn) -> None:
    conn = live
    declare(conn, "q", concurrency=5)
    enqueue_many(conn, "q", "flow", [{"args": [i], "kwargs": {}} for i in range(40)])
    claimers = 8
    barrier = threading.Barrier(claimers)
    results: list[list[str]] = [[] for _ in range(claimers)]
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                set_now(c, T0)
                barrier.wait(timeout=10)
                for _ in range(3):
                    results[n] += claim_ids(c, f"w{n}", "q", 3)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(claimers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    claimed = [wid for r in results for wid in r]
    assert len(claimed) == 5 and len(set(claimed)) == 5
    assert running(conn, "q") == 5


def test_a_claim_of_a_limited_queue_waits_for_one_in_flight_and_counts_its_runs(
    live: Conn, interleave: Interleaving
) -> None:
    declare(live, "q", concurrency=3)
    for i in range(5):
        enqueue(live, "q", id=f"r{i}")
    a = interleave.session(T0)
    with a.transaction():  # a: begin; claim two (holding the queue's row)
        assert claim_ids(a, "w1", "q", 2) == ["r0", "r1"]
        b = interleave.waits(lambda c: claim_ids(c, "w2", "q", 5), now=T0)  # b: claim, waits
        assert b.running
    assert b.join() == ["r2"]  # a committed: b counts a's two runs, one slot is left
    assert running(live, "q") == 3


def test_claims_of_an_unlimited_queue_skip_the_runs_one_in_flight_takes(
    live: Conn, interleave: Interleaving
) -> None:
    declare(live, "q")
    for i in range(4):
        enqueue(live, "q", id=f"r{i}")
    a, b = interleave.session(T0), interleave.session(T0)
    with a.transaction():  # a: begin; claim two
        assert claim_ids(a, "w1", "q", 2) == ["r0", "r1"]
        assert claim_ids(b, "w2", "q", 5) == ["r2", "r3"]  # b: does not wait, skips a's rows
    assert claim_ids(b, "w2", "q", 5) == []  # a committed: nothing is claimed twice
    assert running(live, "q") == 4


def test_worker_concurrency_caps_runs_per_worker(conn: Conn) -> None:
    declare(conn, "q", worker_concurrency=2)
    for i in range(6):
        enqueue(conn, "q", id=f"r{i}")
    assert claim_ids(conn, "w1", "q", 10) == ["r0", "r1"]
    assert claim_ids(conn, "w1", "q", 10) == []
    assert claim_ids(conn, "w2", "q", 1) == ["r2"]
    assert claim_ids(conn, "w2", "q", 10) == ["r3"]
    finish(conn, "r0", 1)
    assert claim_ids(conn, "w1", "q", 10) == ["r4"]


def test_worker_concurrency_counts_per_queue(conn: Conn) -> None:
    declare(conn, "a", worker_concurrency=1)
    declare(conn, "b")
    enqueue(conn, "b", id="b1")
    enqueue(conn, "b", id="b2")
    enqueue(conn, "a", id="a1")
    assert set(claim_ids(conn, "w1", ["a", "b"])) == {"a1", "b1", "b2"}


def test_partition_concurrency_limits_each_key_not_the_queue(conn: Conn) -> None:
    declare(conn, "q", partition_concurrency=1)
    for wid, key in [("a1", "A"), ("a2", "A"), ("b1", "B"), ("n1", None), ("n2", None),
                     ("b2", "B"), ("c1", "C")]:
        enqueue(conn, "q", id=wid, partition_key=key)
    # One per key in one batch; runs without a key are not partitioned.
    assert claim_ids(conn, "w1", "q", 10) == ["a1", "b1", "n1", "n2", "c1"]
    assert claim_ids(conn, "w2", "q", 10) == []
    finish(conn, "a1", 1)
    assert claim_ids(conn, "w2", "q", 10) == ["a2"]
    finish(conn, "b1", 1, "failed", error=ERROR)
    assert claim_ids(conn, "w2", "q", 10) == ["b2"]


def test_partition_concurrency_counts_runs_claimed_in_earlier_claims(conn: Conn) -> None:
    declare(conn, "q", partition_concurrency=2)
    for i in range(4):
        enqueue(conn, "q", id=f"a{i}", partition_key="A")
    assert claim_ids(conn, "w1", "q", 1) == ["a0"]
    assert claim_ids(conn, "w2", "q", 1) == ["a1"]
    assert claim_ids(conn, "w3", "q", 5) == []


def test_partition_concurrency_is_reached_within_one_batch(conn: Conn) -> None:
    declare(conn, "q", partition_concurrency=2)
    for i in range(4):
        enqueue(conn, "q", id=f"a{i}", partition_key="A")
    enqueue(conn, "q", id="b0", partition_key="B")
    assert claim_ids(conn, "w1", "q", 10) == ["a0", "a1", "b0"]


def test_partition_and_global_concurrency_combine(conn: Conn) -> None:
    declare(conn, "q", concurrency=2, partition_concurrency=1)
    for wid, key in [("a1", "A"), ("a2", "A"), ("b1", "B"), ("c1", "C")]:
        enqueue(conn, "q", id=wid, partition_key=key)
    assert claim_ids(conn, "w1", "q", 10) == ["a1", "b1"]
    assert claim_ids(conn, "w1", "q", 10) == []


# -- rate limit ----------------------------------------------------------------------------------


def test_rate_limit_allows_n_starts_per_sliding_window(conn: Conn) -> None:
    declare(conn, "q", rate_limit=3, rate_period_seconds=10)
    for i in range(12):
        enqueue(conn, "q", id=f"r{i:02}")
    assert claim_ids(conn, "w1", "q", 1) == ["r00"]          # start at T0
    set_now(conn, at(2))
    assert claim_ids(conn, "w2", "q", 10) == ["r01", "r02"]  # two starts at T0+2
    for t in (2, 5, 9.999999):
        set_now(conn, at(t))
        assert claim_ids(conn, "w3", "q", 10) == [], t
    # The window slides: at T0+10 exactly the first start leaves it, and only that one slot
    # opens; the two slots of T0+2 open at T0+12.
    set_now(conn, at(10))
    assert claim_ids(conn, "w3", "q", 10) == ["r03"]
    set_now(conn, at(11.999999))
    assert claim_ids(conn, "w3", "q", 10) == []
    set_now(conn, at(12))
    assert claim_ids(conn, "w3", "q", 10) == ["r04", "r05"]
    set_now(conn, at(19.9))
    assert claim_ids(conn, "w3", "q", 10) == []
    set_now(conn, at(20))
    assert claim_ids(conn, "w3", "q", 10) == ["r06"]
    # Old starts are pruned as the window moves.
    assert count(conn, "pgdurable.queue_starts") <= 3


def test_rate_limit_counts_starts_not_running_runs(conn: Conn) -> None:
    declare(conn, "q", rate_limit=2, rate_period_seconds=60)
    for i in range(4):
        enqueue(conn, "q", id=f"r{i}")
    assert claim_ids(conn, "w1", "q", 10) == ["r0", "r1"]
    finish(conn, "r0", 1)
    finish(conn, "r1", 1)
    set_now(conn, at(59))
    assert claim_ids(conn, "w1", "q", 10) == []
    set_now(conn, at(60))
    assert claim_ids(conn, "w1", "q", 10) == ["r2", "r3"]


def test_rate_limit_is_per_queue(conn: Conn) -> None:
    declare(conn, "slow", rate_limit=1, rate_period_seconds=60)
    declare(conn, "fast")
    for i in range(3):
        enqueue(conn, "slow", id=f"s{i}")
        enqueue(conn, "fast", id=f"f{i}")
    assert sorted(claim_ids(conn, "w1", ["slow", "fast"], 10)) == ["f0", "f1", "f2", "s0"]


# -- the names filter ----------------------------------------------------------------------------


def test_claim_only_hands_out_runs_whose_names_the_worker_registers(conn: Conn) -> None:
    declare(conn, "q")
    enqueue(conn, "q", "mod.known", id="k1", priority=5)
    enqueue(conn, "q", "mod.unknown", id="u1", priority=0)
    enqueue(conn, "q", "mod.known", id="k2", priority=5)
    assert claim_ids(conn, "w1", "q", 10, names=["mod.known"]) == ["k1", "k2"]
    assert claim_ids(conn, "w1", "q", 10, names=["mod.other"]) == []
    assert claim_ids(conn, "w1", "q", 10, names=[]) == []
    assert workflow(conn, "u1")["status"] == "pending" and ready_ids(conn) == {"u1"}
    assert claim_ids(conn, "w2", "q", 10, names=["mod.unknown", "x"]) == ["u1"]


def test_runs_for_other_names_do_not_use_up_the_batch(conn: Conn) -> None:
    declare(conn, "q")
    for i in range(5):
        enqueue(conn, "q", "other", id=f"o{i}")
    enqueue(conn, "q", "mine", id="m1")
    assert claim_ids(conn, "w1", "q", 1, names=["mine"]) == ["m1"]


# -- deadlines -----------------------------------------------------------------------------------


def test_a_run_whose_deadline_passed_is_cancelled_instead_of_claimed(conn: Conn) -> None:
    declare(conn, "q")
    enqueue(conn, "q", id="late", deadline=at(5))
    enqueue(conn, "q", id="in-time", deadline=at(10))
    enqueue(conn, "q", id="exact", deadline=at(6))
    set_now(conn, at(6))
    assert claim_ids(conn, "w1", "q", 10) == ["in-time", "exact"]
    row = workflow(conn, "late")
    assert row["status"] == "cancelled"
    assert row["owner"] is None and row["lease_until"] is None and row["finished_at"] == at(6)
    assert row["error"]["type"] == "DeadlineExceeded"
    assert "deadline" in row["error"]["message"]
    assert ready_ids(conn) == set()
    assert claim_ids(conn, "w1", "q", 10) == []


def test_expired_runs_do_not_use_up_the_batch(conn: Conn) -> None:
    declare(conn, "q")
    enqueue(conn, "q", id="expired", deadline=at(1))
    enqueue(conn, "q", id="fine")
    set_now(conn, at(2))
    assert claim_ids(conn, "w1", "q", 1) == ["fine"]


def test_a_run_that_started_before_its_deadline_is_not_cancelled_when_reclaimed(
    conn: Conn,
) -> None:
    declare(conn, "q")
    enqueue(conn, "q", id="r1", deadline=at(10))
    assert claim_ids(conn, "w1", "q") == ["r1"]
    set_now(conn, at(1))
    release(conn, "r1", 1)
    set_now(conn, at(11))
    assert claim_ids(conn, "w2", "q") == ["r1"]


# -- leases and fencing --------------------------------------------------------------------------


def test_expired_lease_is_requeued_and_claimed_with_a_new_epoch(conn: Conn) -> None:
    declare(conn, "q")
    enqueue(conn, "q", id="r1")
    [first] = claim(conn, "w1", "q", lease=30)
    assert first["epoch"] == 1
    row = workflow(conn, "r1")
    assert (row["status"], row["owner"], row["lease_until"]) == ("running", "w1", at(30))
    record(conn, "r1", 1, 0, "s0", output=1)

    set_now(conn, at(29))
    assert requeue_expired(conn) == 0
    assert claim_ids(conn, "w2", "q") == []
    set_now(conn, at(30.5))
    assert requeue_expired(conn, ["other"]) == 0
    assert requeue_expired(conn, ["q"]) == 1
    assert workflow(conn, "r1")["status"] == "pending" and ready_ids(conn) == {"r1"}
    [second] = claim(conn, "w2", "q", lease=30)
    assert (second["epoch"], second["has_steps"]) == (2, True)
    row = workflow(conn, "r1")
    assert (row["owner"], row["attempt"], row["started_at"]) == ("w2", 2, T0)

    # Every write of the stale execution is refused.
    with sqlstate("PD001", conn):
        record(conn, "r1", 1, 1, "s1", output=2)
    with sqlstate("PD001", conn):
        finish(conn, "r1", 1, output="stale")
    with sqlstate("PD001", conn):
        release(conn, "r1", 1)
    with sqlstate("PD001", conn):
        call(conn, "select * from pgdurable.load_steps('r1', 1)")
    hb = call(conn, "select pgdurable.heartbeat('w1', array['r1'], 30) as n")
    assert hb[0]["n"] == 0
    # The new owner carries on.
    record(conn, "r1", 2, 1, "s1", output=2)
    finish(conn, "r1", 2, output="fresh")
    row = workflow(conn, "r1")
    assert (row["status"], row["output"]) == ("succeeded", "fresh")


def test_heartbeat_renews_all_of_a_workers_runs_in_one_statement(conn: Conn) -> None:
    declare(conn, "q")
    for i in range(3):
        enqueue(conn, "q", id=f"r{i}")
    enqueue(conn, "q", id="other")
    assert len(claim(conn, "w1", "q", 3, lease=30)) == 3
    claim(conn, "w2", "q", 1, lease=30)
    set_now(conn, at(20))
    n = call(conn, "select pgdurable.heartbeat('w1', array['r0', 'r1', 'r2', 'other'], 30) as n")
    assert n[0]["n"] == 3
    leases = call(conn, "select id, lease_until from pgdurable.workflows order by id")
    assert {r["id"]: r["lease_until"] for r in leases} == {
        "r0": at(50), "r1": at(50), "r2": at(50), "other": at(30)}
    set_now(conn, at(40))
    assert requeue_expired(conn) == 1  # only the run w1 does not hold
    assert claim_ids(conn, "w3", "q") == ["other"]


def test_claim_refuses_a_bad_lease(conn: Conn) -> None:
    declare(conn, "q")
    enqueue(conn, "q", id="r1")
    for lease in (0.0, -1.0, None, float("inf")):
        with sqlstate("PD006", conn):
            claim(conn, "w1", "q", lease=lease)  # type: ignore[arg-type]
    assert workflow(conn, "r1")["status"] == "pending"
    assert claim(conn, "w1", "q", 0) == []


def test_release_gives_a_run_back_at_once(conn: Conn) -> None:
    declare(conn, "q", worker_concurrency=1, rate_limit=5, rate_period_seconds=60)
    enqueue(conn, "q", id="r1")
    enqueue(conn, "q", id="r2")
    assert claim_ids(conn, "w1", "q") == ["r1"]
    set_now(conn, at(3))
    with sqlstate("PD001", conn):
        release(conn, "r1", 7)
    release(conn, "r1", 1)
    row = workflow(conn, "r1")
    assert (row["status"], row["owner"], row["lease_until"]) == ("pending", None, None)
    assert ready_ids(conn) == {"r1", "r2"}
    # w1's slot was freed by the release.
    assert claim_ids(conn, "w1", "q") == ["r2"]
    # The released run is claimable at once (not delayed), with a new epoch.
    [again] = claim(conn, "w2", "q")
    assert (again["id"], again["epoch"]) == ("r1", 2)


# -- requeue (operator resume onto the queue) ----------------------------------------------------


def test_requeue_of_a_failed_run_keeps_done_steps_and_forgets_the_failing_one(conn: Conn
                                                                            ) -> None:
    declare(conn, "q")
    enqueue(conn, "q", id="r1")
    [row] = claim(conn, "w1", "q")
    record(conn, "r1", 1, 0, "a", output="A")
    record(conn, "r1", 1, 1, "b", "failed", error=ERROR)
    finish(conn, "r1", 1, "failed", error=ERROR)
    dead = workflow(conn, "r1")
    assert (dead["status"], dead["failures"], dead["error"]) == ("failed", 1, ERROR)
    assert ready_ids(conn) == set()

    set_now(conn, at(100))
    assert requeue(conn, "r1") == "pending"
    row = workflow(conn, "r1")
    assert (row["status"], row["error"], row["finished_at"], row["failures"]) == (
        "pending", None, None, 0)
    assert row["available_at"] == at(100)
    assert steps(conn, "r1") == [(0, "a", "done")]
    [again] = claim(conn, "w2", "q")
    assert (again["epoch"], again["has_steps"]) == (2, True)


def test_requeue_of_cancelled_abandoned_and_other_runs(conn: Conn) -> None:
    declare(conn, "q")
    for wid in ("cancelled", "abandoned", "live", "done", "waiting"):
        enqueue(conn, "q", id=wid)
    assert call(conn, "select pgdurable.cancel('cancelled') as s")[0]["s"] == "cancelled"
    assert "cancelled" not in ready_ids(conn)
    claimed = claim(conn, "w1", "q", 3, lease=30)
    epochs = {r["id"]: r["epoch"] for r in claimed}
    assert set(epochs) == {"abandoned", "live", "done"}
    finish(conn, "done", epochs["done"], output=1)
    set_now(conn, at(31))
    call(conn, "select pgdurable.heartbeat('w1', array['live'], 30)")

    assert requeue(conn, "cancelled") == "pending"
    assert requeue(conn, "abandoned") == "pending"   # running, but its lease expired
    assert requeue(conn, "live") == "running"        # a live lease is left to its owner
    assert requeue(conn, "done") == "succeeded"      # a succeeded run is left alone
    assert requeue(conn, "waiting") == "pending"
    assert ready_ids(conn) == {"cancelled", "abandoned", "waiting"}
    assert workflow(conn, "live")["owner"] == "w1"
    with sqlstate("PD004", conn):
        requeue(conn, "ghost")


def test_requeue_with_a_live_dedup_duplicate_raises_a_domain_error(conn: Conn) -> None:
    declare(conn, "q")
    enqueue(conn, "q", id="r1", dedup_key="K")
    call(conn, "select pgdurable.cancel('r1')")
    assert enqueue(conn, "q", id="r2", dedup_key="K") == "r2"
    with pytest.raises(psycopg.Error) as info, conn.transaction():
        requeue(conn, "r1")
    assert (info.value.sqlstate or "").startswith("PD")


# -- workflow-level retries ----------------------------------------------------------------------


def test_finish_failed_schedules_retries_with_exponential_backoff(conn: Conn) -> None:
    declare(conn, "q")
    enqueue(conn, "q", id="r1", max_attempts=4, retry_backoff=2.0)
    now = 0.0
    for failures, wait in [(1, 2.0), (2, 4.0), (3, 8.0)]:
        [row] = claim(conn, "w1", "q")
        assert row["epoch"] == failures
        if failures == 1:
            record(conn, "r1", row["epoch"], 0, "a", output="A")
        record(conn, "r1", row["epoch"], 1, "b", "failed", error=ERROR)
        finish(conn, "r1", row["epoch"], "failed", error=ERROR)
        w = workflow(conn, "r1")
        assert (w["status"], w["failures"], w["owner"], w["finished_at"]) == (
            "pending", failures, None, None)
        assert w["error"] == ERROR
        assert w["available_at"] == at(now + wait)  # retry_backoff * 2^(failures - 1)
        assert steps(conn, "r1") == [(0, "a", "done")]  # the failing step will run again
        assert ready_ids(conn) == {"r1"}
        set_now(conn, at(now + wait - 0.000001))
        assert claim_ids(conn, "w1", "q") == []
        now += wait
        set_now(conn, at(now))
    # The fourth and last attempt fails: the run is dead.
    [row] = claim(conn, "w1", "q")
    assert (row["epoch"], row["has_steps"]) == (4, True)
    finish(conn, "r1", 4, "failed", error=ERROR)
    w = workflow(conn, "r1")
    assert (w["status"], w["failures"], w["finished_at"], w["error"]) == (
        "failed", 4, at(now), ERROR)
    assert ready_ids(conn) == set()
    set_now(conn, at(now + 10_000))
    assert claim_ids(conn, "w1", "q") == []


def test_retry_backoff_is_capped_at_one_hour_and_success_never_retries(conn: Conn) -> None:
    declare(conn, "q")
    enqueue(conn, "q", id="slow", max_attempts=5, retry_backoff=3000)
    enqueue(conn, "q", id="ok", max_attempts=5)
    epochs = {r["id"]: r["epoch"] for r in claim(conn, "w1", "q")}
    finish(conn, "ok", epochs["ok"], output=1)
    assert workflow(conn, "ok")["status"] == "succeeded"
    finish(conn, "slow", epochs["slow"], "failed", error=ERROR)
    assert workflow(conn, "slow")["available_at"] == at(3000)
    set_now(conn, at(3000))
    [row] = claim(conn, "w1", "q")
    finish(conn, "slow", row["epoch"], "failed", error=ERROR)
    assert workflow(conn, "slow")["available_at"] == at(3000 + 3600)


def test_single_attempt_runs_fail_at_once(conn: Conn) -> None:
    declare(conn, "q")
    enqueue(conn, "q", id="r1")
    claim(conn, "w1", "q")
    finish(conn, "r1", 1, "failed", error=ERROR)
    w = workflow(conn, "r1")
    assert (w["status"], w["failures"], w["max_attempts"]) == ("failed", 1, 1)


# -- enqueue -------------------------------------------------------------------------------------


def test_enqueue_defaults_and_stored_options(conn: Conn) -> None:
    declare(conn, "q")
    wid = enqueue(conn, "q", "mod.fn", inputs={"args": [42], "kwargs": {}}, priority=3,
                  delay_seconds=1.5, partition_key="P", deadline=at(60), max_attempts=3,
                  retry_backoff=0.5)
    w = workflow(conn, wid)
    assert len(wid) == 36  # a generated uuid
    assert (w["name"], w["queue"], w["status"], w["inputs"], w["priority"]) == (
        "mod.fn", "q", "pending", {"args": [42], "kwargs": {}}, 3)
    assert (w["available_at"], w["partition_key"], w["deadline"], w["attempt"]) == (
        at(1.5), "P", at(60), 0)
    assert (w["max_attempts"], w["retry_backoff"], w["failures"]) == (3, 0.5, 0)
    assert w["created_at"] == T0 and w["started_at"] is None
    d = call(conn, "select pgdurable.enqueue('default', 'mod.fn') as id")[0]["id"]
    assert workflow(conn, d)["inputs"] == {"args": [], "kwargs": {}}
    assert ready_ids(conn) == {wid, d}


def test_enqueue_is_idempotent_by_id(conn: Conn) -> None:
    declare(conn, "q")
    declare(conn, "other")
    assert enqueue(conn, "q", inputs={"args": [1], "kwargs": {}}, id="x") == "x"
    assert enqueue(conn, "other", inputs={"args": [2], "kwargs": {}}, id="x", priority=-5) == "x"
    w = workflow(conn, "x")
    assert (w["inputs"]["args"], w["queue"], w["priority"]) == ([1], "q", 0)
    assert count(conn, "pgdurable.workflows") == 1 and count(conn, "pgdurable.ready") == 1
    [row] = claim(conn, "w1", "q")
    finish(conn, "x", row["epoch"], output="done")
    # A finished run is not run again by enqueueing its id again.
    assert enqueue(conn, "q", id="x") == "x"
    assert workflow(conn, "x")["status"] == "succeeded"
    assert ready_ids(conn) == set()


def test_enqueue_of_an_existing_id_for_another_workflow_is_pd002(conn: Conn) -> None:
    declare(conn, "q")
    enqueue(conn, "q", "mod.a", id="x")
    with sqlstate("PD002", conn):
        enqueue(conn, "q", "mod.b", id="x")
    assert workflow(conn, "x")["name"] == "mod.a"


def test_dedup_key_returns_the_live_run_and_frees_when_it_finishes(conn: Conn) -> None:
    declare(conn, "q")
    declare(conn, "q2")
    first = enqueue(conn, "q", dedup_key="user-1")
    assert enqueue(conn, "q", dedup_key="user-1") == first
    assert enqueue(conn, "q2", dedup_key="user-1") != first  # keys are per queue
    other = enqueue(conn, "q", dedup_key="user-2")
    assert other != first
    [row] = [r for r in claim(conn, "w1", "q") if r["id"] == first]
    assert enqueue(conn, "q", dedup_key="user-1") == first  # running is live too
    finish(conn, first, row["epoch"], output=1)
    second = enqueue(conn, "q", dedup_key="user-1")
    assert second not in (first, other)
    call(conn, "select pgdurable.cancel(%s)", (second,))
    third = enqueue(conn, "q", dedup_key="user-1")
    assert third not in (first, second)
    assert count(conn, "pgdurable.workflows") == 5


def test_unknown_queue_is_pd007_and_writes_nothing(conn: Conn) -> None:
    with sqlstate("PD007", conn):
        enqueue(conn, "ghost", id="x")
    with sqlstate("PD007", conn):
        enqueue_many(conn, "ghost", "flow", [{"args": [], "kwargs": {}}])
    assert count(conn, "pgdurable.workflows") == 0 and count(conn, "pgdurable.ready") == 0


BAD_ENQUEUE_OPTIONS: list[dict[str, Any]] = [
    {"delay_seconds": -1}, {"delay_seconds": None}, {"max_attempts": 0},
    {"max_attempts": -3}, {"max_attempts": None}, {"retry_backoff": -0.5},
    {"retry_backoff": None}, {"inputs": Jsonb([1, 2])}, {"inputs": Jsonb("x")},
    {"name": ""}, {"name": None},
]


def test_enqueue_refuses_bad_options_with_pd006(conn: Conn) -> None:
    declare(conn, "q")
    for options in BAD_ENQUEUE_OPTIONS:
        with sqlstate("PD006", conn):
            enqueue(conn, "q", **{"name": "flow", **options})
    with sqlstate("PD006", conn):
        enqueue_many(conn, "q", "flow", [{"args": [], "kwargs": {}}], delay_seconds=-1)
    assert count(conn, "pgdurable.workflows") == 0 and count(conn, "pgdurable.ready") == 0


@pytest.mark.parametrize("delay", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_enqueue_refuses_non_finite_delays_with_pd006(conn: Conn, delay: float) -> None:
    declare(conn, "q")
    with sqlstate("PD006", conn):
        enqueue(conn, "q", delay_seconds=delay)


BAD_LIMITS: list[dict[str, Any]] = [
    {"concurrency": 0}, {"concurrency": -1}, {"worker_concurrency": 0},
    {"partition_concurrency": -2}, {"rate_limit": 0, "rate_period_seconds": 1},
    {"rate_limit": -1, "rate_period_seconds": 1},
    {"rate_limit": 5, "rate_period_seconds": 0}, {"rate_limit": 5, "rate_period_seconds": -1},
    {"rate_limit": 5}, {"rate_period_seconds": 1.0},
]


def test_declare_queue_refuses_bad_limits_with_pd006(conn: Conn) -> None:
    declare(conn, "q", concurrency=3)
    for limits in BAD_LIMITS:
        with sqlstate("PD006", conn):
            declare(conn, "q", **limits)  # an update
        with sqlstate("PD006", conn):
            declare(conn, "fresh", **limits)  # a new queue
    for name in ("", None):
        with sqlstate("PD006", conn):
            declare(conn, name, concurrency=1)  # type: ignore[arg-type]
    rows = call(conn, "select name, concurrency from pgdurable.queues order by name")
    assert [(r["name"], r["concurrency"]) for r in rows] == [("default", None), ("q", 3)]


@pytest.mark.parametrize("period", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_declare_queue_refuses_non_finite_rate_periods(conn: Conn, period: float) -> None:
    with sqlstate("PD006", conn):
        declare(conn, "q", rate_limit=1, rate_period_seconds=period)


def test_declare_queue_updates_limits(conn: Conn) -> None:
    declare(conn, "q", concurrency=2, rate_limit=5, rate_period_seconds=1.5)
    declare(conn, "q", worker_concurrency=3, partition_concurrency=4)
    [row] = [r for r in call(conn, "select * from pgdurable.queue_stats()") if r["name"] == "q"]
    assert (row["concurrency"], row["worker_concurrency"], row["rate_limit"],
            row["rate_period_seconds"], row["partition_concurrency"]) == (None, 3, None, None, 4)


# -- enqueue_many --------------------------------------------------------------------------------


def test_enqueue_many_returns_ids_in_input_order_including_existing_ones(conn: Conn) -> None:
    declare(conn, "q")
    enqueue(conn, "q", inputs={"args": ["old"], "kwargs": {}}, id="b")
    inputs = [{"args": [x], "kwargs": {}} for x in ("new-c", "new-b", "new-a")]
    ids = enqueue_many(conn, "q", "flow", inputs, ids=["c", "b", "a"], priority=2)
    assert ids == ["c", "b", "a"]
    assert workflow(conn, "b")["inputs"]["args"] == ["old"]  # existing: returned, not rewritten
    assert workflow(conn, "b")["priority"] == 0
    assert workflow(conn, "a")["inputs"]["args"] == ["new-a"]
    assert count(conn, "pgdurable.workflows") == 3
    # New ones are claimed in input order, after the older run's lower priority number.
    assert claim_ids(conn, "w1", "q") == ["b", "c", "a"]


def test_enqueue_many_generates_ids_and_applies_options(conn: Conn) -> None:
    declare(conn, "q")
    inputs = [{"args": [i], "kwargs": {}} for i in range(50)]
    ids = enqueue_many(conn, "q", "flow", inputs, delay_seconds=2, partition_key="P",
                       max_attempts=2)
    assert len(ids) == len(set(ids)) == 50
    rows = call(conn, "select id, inputs, available_at, partition_key, max_attempts "
                      "from pgdurable.workflows")
    by_id = {r["id"]: r for r in rows}
    assert [by_id[i]["inputs"]["args"] for i in ids] == [[i] for i in range(50)]
    assert {(r["available_at"], r["partition_key"], r["max_attempts"]) for r in rows} == {
        (at(2), "P", 2)}
    assert ready_ids(conn) == set(ids)
    assert enqueue_many(conn, "q", "flow", []) == []


def test_enqueue_many_refuses_mismatched_ids(conn: Conn) -> None:
    declare(conn, "q")
    with sqlstate("PD006", conn):
        enqueue_many(conn, "q", "flow", [{"args": [], "kwargs": {}}] * 2, ids=["only-one"])
    with sqlstate("PD006", conn):
        enqueue_many(conn, "q", "flow", [{"args": [], "kwargs": {}}], max_attempts=0)
    assert count(conn, "pgdurable.workflows") == 0


def test_enqueue_many_with_an_id_of_another_workflow_is_pd002(conn: Conn) -> None:
    declare(conn, "q")
    enqueue(conn, "q", "mod.a", id="x")
    with sqlstate("PD002", conn):
        enqueue_many(conn, "q", "mod.b", [{"args": [], "kwargs": {}}], ids=["x"])


# -- enqueue_runs (the bulk enqueue the Python library sends) ------------------------------------


def enqueue_runs(conn: Conn, queue: str, name: str, runs: Any, **options: Any) -> int:
    cols = "".join(f", p_{k} => %({k})s" for k in options)
    row = call(conn, f"select pgdurable.enqueue_runs(%(queue)s, %(name)s, %(runs)s{cols}) as n",
               {"queue": queue, "name": name, "runs": Jsonb(runs), **options})[0]
    return int(row["n"])


def test_enqueue_runs_writes_pairs_in_order_and_keeps_existing_ones(conn: Conn) -> None:
    declare(conn, "q")
    enqueue(conn, "q", inputs={"args": ["old"], "kwargs": {}}, id="b")
    runs = [[i, {"args": [f"new-{i}"], "kwargs": {}}] for i in ("c", "b", "a")]
    assert enqueue_runs(conn, "q", "flow", runs, priority=2) == 2
    assert workflow(conn, "b")["inputs"]["args"] == ["old"]  # existing: left as it is
    assert (workflow(conn, "a")["inputs"]["args"], workflow(conn, "a")["priority"]) == (
        ["new-a"], 2)
    assert claim_ids(conn, "w1", "q") == ["b", "c", "a"]  # input order within a priority


def test_enqueue_runs_applies_options_like_enqueue_many(conn: Conn) -> None:
    declare(conn, "q")
    runs = [[f"r{i}", {"args": [i], "kwargs": {}}] for i in range(50)]
    assert enqueue_runs(conn, "q", "flow", runs, delay_seconds=2, partition_key="P",
                        max_attempts=2) == 50
    rows = call(conn, "select available_at, partition_key, max_attempts, status "
                      "from pgdurable.workflows")
    assert {(r["available_at"], r["partition_key"], r["max_attempts"], r["status"])
            for r in rows} == {(at(2), "P", 2, "pending")}
    assert ready_ids(conn) == {f"r{i}" for i in range(50)}
    assert enqueue_runs(conn, "q", "flow", []) == 0


def test_enqueue_runs_refuses_bad_input(conn: Conn) -> None:
    declare(conn, "q")
    enqueue(conn, "q", "mod.a", id="x")
    for runs, options, state in [
        ([["x", {"args": [], "kwargs": {}}]], {}, "PD002"),  # another workflow's id
        ({"not": "an array"}, {}, "PD006"),
        ([[1, {"args": [], "kwargs": {}}]], {}, "PD006"),  # ids are strings
        ([["y", {"args": [], "kwargs": {}}]], {"max_attempts": 0}, "PD006"),
    ]:
        with sqlstate(state, conn):
            enqueue_runs(conn, "q", "mod.b", runs, **options)
    with sqlstate("PD007", conn):
        enqueue_runs(conn, "ghost", "flow", [])
    assert count(conn, "pgdurable.workflows") == 1


# -- cancel and stats ----------------------------------------------------------------------------


def test_cancel_takes_a_queued_run_off_the_ready_list(conn: Conn) -> None:
    declare(conn, "q")
    enqueue(conn, "q", id="r1")
    enqueue(conn, "q", id="r2")
    assert call(conn, "select pgdurable.cancel('r1') as s")[0]["s"] == "cancelled"
    assert ready_ids(conn) == {"r2"}
    assert claim_ids(conn, "w1", "q") == ["r2"]


def test_queue_stats_counts_ready_and_running(conn: Conn) -> None:
    declare(conn, "q", concurrency=4, rate_limit=10, rate_period_seconds=2.5)
    for i in range(5):
        enqueue(conn, "q", id=f"r{i}")
    claim(conn, "w1", "q", 2)
    stats = {r["name"]: r for r in call(conn, "select * from pgdurable.queue_stats()")}
    assert set(stats) == {"default", "q"}
    q = stats["q"]
    assert (q["ready"], q["running"], q["concurrency"], q["rate_limit"],
            q["rate_period_seconds"], q["paused"]) == (3, 2, 4, 10, 2.5, False)


# -- NOTIFY --------------------------------------------------------------------------------------


def notifications(listener: Conn, wait: float = 0.3) -> list[str]:
    return [n.payload for n in listener.notifies(timeout=wait)]


@pytest.fixture
def listener(dsn: str) -> Iterator[Conn]:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("listen pgdurable")
        yield c


def test_one_notification_per_queue_per_transaction(dsn: str, live: Conn, listener: Conn
                                                    ) -> None:
    conn = live
    declare(conn, "q1")
    declare(conn, "q2")
    with psycopg.connect(dsn) as tx:
        set_now(tx, T0)
        for i in range(100):
            enqueue(tx, "q1", inputs={"args": [i], "kwargs": {}})
        tx.commit()
    assert notifications(listener) == ["q1"]

    with psycopg.connect(dsn) as tx:
        set_now(tx, T0)
        for i in range(50):
            enqueue(tx, "q1" if i % 2 else "q2")
        enqueue_many(tx, "q2", "flow", [{"args": [], "kwargs": {}}] * 20)
        tx.commit()
    assert sorted(notifications(listener)) == ["q1", "q2"]

    enqueue_many(conn, "q1", "flow", [{"args": [], "kwargs": {}}] * 30)
    assert notifications(listener) == ["q1"]


def test_no_notification_before_commit_nor_on_rollback_nor_for_delayed_runs(
    dsn: str, live: Conn, listener: Conn
) -> None:
    conn = live
    declare(conn, "q")
    with psycopg.connect(dsn) as tx:
        enqueue(tx, "q")
        assert notifications(listener, 0.2) == []
        tx.rollback()
    assert notifications(listener, 0.2) == []
    enqueue(conn, "q", delay_seconds=5)
    assert notifications(listener, 0.2) == []


def test_release_and_requeue_wake_workers(live: Conn, listener: Conn) -> None:
    conn = live
    declare(conn, "q")
    enqueue(conn, "q", id="r1")
    assert notifications(listener) == ["q"]
    claim(conn, "w1", "q")
    release(conn, "r1", 1)
    assert notifications(listener) == ["q"]
    claim(conn, "w1", "q")
    finish(conn, "r1", 2, "failed", error=ERROR)
    assert requeue(conn, "r1") == "pending"
    assert notifications(listener) == ["q"]


def test_requeue_expired_is_bounded(conn: Conn) -> None:
    declare(conn, "q")
    for i in range(5):
        enqueue(conn, "q", id=f"r{i}")
    claim(conn, "w1", "q", 5, lease=10)
    set_now(conn, T0 + timedelta(seconds=11))
    assert requeue_expired(conn, None, 2) == 2
    assert requeue_expired(conn, None, 10) == 3
    assert requeue_expired(conn, None, 10) == 0
    assert len(ready_ids(conn)) == 5
