"""Cancel of a run tree, timeouts, and the fixes of issue 9 item 7 in SQL (0010_tree_cancel.sql,
runs.sql, recovery.sql): `cancel(id, cascade)`, `time_out_runs` in the sweep, the recovery
budget counted by every takeover, and `start_workflow` leaving a pending run to its queue. The
clock is moved with `pgdurable.now`; nothing sleeps."""

from __future__ import annotations

import pytest

from tests.support.sql import (
    Conn,
    acquire,
    at,
    call,
    cancel,
    claim_one,
    declare,
    enqueue,
    ready_ids,
    record,
    resume,
    scalar,
    set_now,
    sqlstate,
    start,
    sweep,
    workflow,
)


def tree(conn: Conn) -> None:
    """root -> (a -> (a1, a2 succeeded), b running); `other` outside the tree."""
    for wid in ("root", "a", "a1", "a2", "b", "other"):
        enqueue(conn, id=wid)
    for child, parent in (("a", "root"), ("a1", "a"), ("a2", "a"), ("b", "root")):
        conn.execute("update pgdurable.workflows set parent_id = %s where id = %s",
                     (parent, child))
    conn.execute("update pgdurable.workflows set status = 'succeeded', finished_at = now() "
                 "where id = 'a2'")
    conn.execute("delete from pgdurable.ready where workflow_id = 'a2'")
    conn.execute("select * from pgdurable.acquire('b', 'w-b', 30)")


def statuses(conn: Conn) -> dict[str, str]:
    return {r["id"]: r["status"] for r in call(conn, "select id, status from pgdurable.workflows")}


def test_cancel_cascades_over_three_levels(db: Conn) -> None:
    tree(db)
    assert cancel(db, "root") == "cancelled"  # the one-argument form cascades
    assert statuses(db) == {"root": "cancelled", "a": "cancelled", "a1": "cancelled",
                            "a2": "succeeded", "b": "cancelled", "other": "pending"}
    assert ready_ids(db) == {"other"}
    b = workflow(db, "b")
    assert (b["owner"], b["lease_until"], b["error"]) == (None, None, None)
    with sqlstate("PD001"):  # the running child's next checkpoint is refused
        record(db, "b", 1, 0, "s", "done", 1)


def test_cancel_without_cascade_cancels_one_run(db: Conn) -> None:
    tree(db)
    assert scalar(db, "select pgdurable.cancel('a', false)") == "cancelled"
    assert statuses(db)["a"] == "cancelled"
    assert {k: v for k, v in statuses(db).items() if k != "a"} == {
        "root": "pending", "a1": "pending", "a2": "succeeded", "b": "running",
        "other": "pending"}


def test_cancel_of_a_finished_run_still_cascades_and_returns_its_status(db: Conn) -> None:
    tree(db)
    assert scalar(db, "select pgdurable.cancel('a2', true)") == "succeeded"
    db.execute("update pgdurable.workflows set status = 'succeeded' where id = 'a'")
    assert scalar(db, "select pgdurable.cancel('a', true)") == "succeeded"
    assert statuses(db)["a1"] == "cancelled"
    assert statuses(db)["root"] == "pending"


def test_cancel_bad_input(db: Conn) -> None:
    with sqlstate("PD004"):
        cancel(db, "nope")
    with sqlstate("PD004"):
        scalar(db, "select pgdurable.cancel('nope', true)")
    enqueue(db, id="r")
    with sqlstate("PD006"):
        scalar(db, "select pgdurable.cancel('r', null)")
    assert workflow(db, "r")["status"] == "pending"


def test_the_sweep_times_out_a_waiting_run_with_its_subtree(db: Conn) -> None:
    wid = scalar(db, "select pgdurable.enqueue('default', 'flow', p_timeout_seconds => 60)")
    assert workflow(db, wid)["timeout_at"] == at(60)
    enqueue(db, id="kid")
    db.execute("update pgdurable.workflows set parent_id = %s where id = 'kid'", (wid,))
    got = claim_one(db, "w-a")
    assert got["id"] == wid
    db.execute("select pgdurable.suspend(%s, %s, null, 'x')", (wid, got["epoch"]))
    assert workflow(db, wid)["waiting_for"] == "x"
    set_now(db, at(59))
    assert sweep(db)["timed_out"] == 0
    set_now(db, at(61))
    assert sweep(db)["timed_out"] == 1
    run, kid = workflow(db, wid), workflow(db, "kid")
    assert run["status"] == kid["status"] == "cancelled"
    assert run["error"]["type"] == kid["error"]["type"] == "WorkflowTimeout"
    assert "passed its timeout" in run["error"]["message"]
    assert kid["error"]["ancestor"] == wid
    assert ready_ids(db) == set()
    assert sweep(db)["timed_out"] == 0


def test_the_sweep_times_out_a_running_run_whose_checkpoint_is_then_refused(db: Conn) -> None:
    got = start(db, "r1", lease=600)
    assert got["started"]
    db.execute("update pgdurable.workflows set timeout_at = %s where id = 'r1'", (at(10),))
    call(db, "select * from pgdurable.start_workflow('r2', 'flow', '{}', 'w', 30, 10)")
    assert workflow(db, "r2")["timeout_at"] == at(10)
    set_now(db, at(11))
    assert sweep(db)["timed_out"] == 2
    assert workflow(db, "r1")["status"] == "cancelled"
    with sqlstate("PD001"):
        record(db, "r1", 1, 0, "s", "done", 1)


@pytest.mark.parametrize("bad", ["0", "-1", "'NaN'", "'Infinity'"])
def test_bad_timeouts_are_refused_and_write_nothing(db: Conn, bad: str) -> None:
    for sql in (f"select pgdurable.enqueue('default', 'flow', p_timeout_seconds => {bad})",
                f"select * from pgdurable.start_workflow('s', 'flow', '{{}}', 'w', 30, {bad})",
                f"select pgdurable.enqueue_runs('default', 'flow', '[[\"e\", {{}}]]', "
                f"p_timeout_seconds => {bad})"):
        with sqlstate("PD006", db):
            db.execute(sql)
    assert scalar(db, "select count(*) from pgdurable.workflows") == 0


def test_enqueue_runs_sets_the_timeout(db: Conn) -> None:
    db.execute("select pgdurable.enqueue_runs('default', 'flow', '[[\"e1\", {}]]', "
               "p_timeout_seconds => 5)")
    assert workflow(db, "e1")["timeout_at"] == at(5)


def expired_running(conn: Conn, wid: str) -> None:
    start(conn, wid, lease=10)
    set_now(conn, at(11))


def test_every_takeover_counts_against_the_recovery_budget(db: Conn) -> None:
    declare(db, "default", max_recoveries=3)
    expired_running(db, "r")
    assert start(db, "r", owner="b")["started"]  # app.start of the id takes it over
    assert workflow(db, "r")["recoveries"] == 1
    set_now(db, at(45))  # its new lease (30 s from 11 s) expired too
    assert acquire(db, "r", "c")  # handle.result()'s takeover
    assert workflow(db, "r")["recoveries"] == 2
    set_now(db, at(80))
    assert resume(db, "r", "d") == []  # app.resume: the third loss is over the budget
    run = workflow(db, "r")
    assert (run["status"], run["recoveries"]) == ("failed", 3)
    assert run["error"]["type"] == "RecoveryLimitExceeded"


def test_start_of_an_expired_run_over_budget_returns_it_dead_lettered(db: Conn) -> None:
    declare(db, "default", max_recoveries=1)
    expired_running(db, "r")
    got = start(db, "r", owner="b")
    assert (got["started"], got["status"]) == (False, "failed")


def test_start_of_a_delayed_queued_run_leaves_it_on_its_queue(db: Conn) -> None:
    enqueue(db, id="later", delay_seconds=3600)
    got = start(db, "later", owner="b")
    assert (got["started"], got["status"]) == (False, "pending")
    assert ready_ids(db) == {"later"}
    assert workflow(db, "later")["recoveries"] == 0
