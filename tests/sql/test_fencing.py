"""Fencing under real concurrency: row locks order a stale owner's writes against a take-over.

Modelled on Absurd's tests/test_lock_ordering.py: one connection holds a transaction open, a
second one's statement must wait on a lock (checked in pg_stat_activity from a third), and the
outcome after the first commits is asserted.
"""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

from tests.support.interleave import Interleaving
from tests.support.sql import (
    T0,
    Conn,
    acquire,
    cancel,
    finish,
    load_steps,
    record,
    sqlstate,
    start,
    steps,
    workflow,
)

LATER = T0 + timedelta(minutes=1)  # after worker-a's 30 s lease


def test_takeover_waits_for_a_step_record_in_flight(
    a: Conn, observer: Conn, interleave: Interleaving
) -> None:
    start(a, "w1", owner="worker-a")
    with a.transaction():
        got = record(a, "w1", 1, 0, "fetch", output="from-a")  # FOR SHARE on the run's row
        assert got["inserted"] is True
        b = interleave.waits(lambda c: acquire(c, "w1", "worker-b"), now=LATER)
        assert b.running
        # worker-a still owns the run inside its transaction
        assert workflow(a, "w1")["attempt"] == 1
    taken = b.join()
    assert [(r["epoch"], r["status"]) for r in taken] == [(2, "running")]
    row = workflow(observer, "w1")
    assert (row["attempt"], row["owner"]) == (2, "worker-b")

    # the stale owner is refused from now on; its committed step is the new owner's checkpoint
    with sqlstate("PD001"):
        record(a, "w1", 1, 1, "next", output="zombie")
    with sqlstate("PD001"):
        finish(a, "w1", 1, "succeeded", output="zombie")
    assert [(s["step_no"], s["output"]) for s in load_steps(observer, "w1", 2)] == [
        (0, "from-a")]


def test_a_stale_write_waits_for_an_uncommitted_takeover_then_is_refused(
    a: Conn, observer: Conn, interleave: Interleaving
) -> None:
    start(a, "w1", owner="worker-a")
    b = interleave.session(LATER)
    with b.transaction():
        assert acquire(b, "w1", "worker-b")[0]["epoch"] == 2
        zombie = interleave.waits(lambda c: record(c, "w1", 1, 0, "fetch", output="zombie"))
        assert zombie.running
    with pytest.raises(psycopg.Error) as info:
        zombie.join()
    assert info.value.sqlstate == "PD001"
    assert steps(observer, "w1") == []
    assert record(observer, "w1", 2, 0, "fetch", output="owner")["inserted"] is True


def test_a_rolled_back_takeover_leaves_the_first_owner_in_charge(
    a: Conn, observer: Conn, interleave: Interleaving
) -> None:
    start(a, "w1", owner="worker-a")
    b = interleave.session(LATER)
    b.execute("begin")
    assert acquire(b, "w1", "worker-b")[0]["epoch"] == 2
    writer = interleave.waits(lambda c: record(c, "w1", 1, 0, "fetch", output="a"))
    b.execute("rollback")
    assert writer.join()["inserted"] is True
    row = workflow(observer, "w1")
    assert (row["attempt"], row["owner"]) == (1, "worker-a")


def test_two_concurrent_takeovers_only_one_wins(
    a: Conn, observer: Conn, interleave: Interleaving
) -> None:
    start(a, "w1", owner="worker-a")
    b = interleave.session(LATER)
    with b.transaction():
        assert acquire(b, "w1", "worker-b")[0]["epoch"] == 2
        c = interleave.waits(lambda conn: acquire(conn, "w1", "worker-c"), now=LATER)
    assert c.join() == []  # re-checked after b committed: the new lease is live
    row = workflow(observer, "w1")
    assert (row["attempt"], row["owner"]) == (2, "worker-b")


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_concurrent_start_of_one_id_waits_for_the_first(
    observer: Conn, interleave: Interleaving, outcome: str
) -> None:
    first = interleave.session(T0)
    first.execute("begin")
    assert start(first, "w1", owner="worker-a")["started"] is True
    second = interleave.waits(lambda c: start(c, "w1", owner="worker-b"))
    first.execute(outcome)
    got = second.join()
    if outcome == "commit":
        assert (got["started"], got["epoch"]) == (False, 1)
        assert workflow(observer, "w1")["owner"] == "worker-a"
    else:
        assert (got["started"], got["epoch"]) == (True, 1)
        assert workflow(observer, "w1")["owner"] == "worker-b"


def test_cancel_waits_for_a_step_record_in_flight_then_fences(
    a: Conn, observer: Conn, interleave: Interleaving
) -> None:
    start(a, "w1", owner="worker-a")
    with a.transaction():
        record(a, "w1", 1, 0, "fetch", output=1)
        canceller = interleave.waits(lambda c: cancel(c, "w1"))
    assert canceller.join() == "cancelled"
    with sqlstate("PD001"):
        finish(a, "w1", 1, "succeeded", output="too late")
    row = workflow(observer, "w1")
    assert (row["status"], row["output"]) == ("cancelled", None)
    assert len(steps(observer, "w1")) == 1


def test_concurrent_records_of_one_position_agree(
    a: Conn, observer: Conn, interleave: Interleaving
) -> None:
    """Two executions of the same epoch racing on one step position (e.g. a retried call):
    the second waits for the first's insert and then returns the first's output."""
    start(a, "w1", owner="worker-a")
    with a.transaction():
        assert record(a, "w1", 1, 0, "fetch", output="first")["inserted"] is True
        other = interleave.waits(lambda c: record(c, "w1", 1, 0, "fetch", output="second"))
    got = other.join()
    assert (got["output"], got["inserted"]) == ("first", False)
