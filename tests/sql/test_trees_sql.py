"""Run trees in SQL: `start_children` (children and their step in one transaction, replayed
without writing), `await_children` (the parent's check and suspension under its joins row's
lock) and the trigger by which the child that completes a wait wakes its parent in its own
final transaction — also when the two race."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.support.interleave import Interleaving
from tests.support.sql import Conn

TERMINAL = ("succeeded", "failed", "cancelled")


def running_parent(conn: Conn, wid: str = "P") -> int:
    conn.execute("select pgdurable.enqueue('default', 'parent', p_id => %s)", (wid,))
    row = conn.execute("select epoch from pgdurable.claim('w', array['default'], 1, 300, "
                       "array['parent'])").fetchone()
    assert row is not None
    return int(row[0])


def start(conn: Conn, parent: str, epoch: int, step_no: int, ids: list[str]) -> list[str]:
    runs = Jsonb([[i, {"args": [], "kwargs": {}}] for i in ids])
    row = conn.execute("select pgdurable.start_children(%s, %s, %s, 'default', 'kid', %s)",
                       (parent, epoch, step_no, runs)).fetchone()
    assert row is not None
    return list(row[0])


def wait(conn: Conn, parent: str, epoch: int, step_no: int, ids: list[str], mode: str = "all",
         suspend: bool = True) -> tuple[bool, bool, Any]:
    row = conn.execute("select * from pgdurable.await_children(%s, %s, %s, %s, %s, %s)",
                       (parent, epoch, step_no, ids, mode, suspend)).fetchone()
    assert row is not None
    return bool(row[0]), bool(row[1]), row[2]


def end(conn: Conn, wid: str, status: str = "succeeded") -> None:
    """A child's execution ends (as its worker would record it)."""
    conn.execute("select pgdurable.acquire(%s, 'kid-worker', 300)", (wid,))
    epoch = conn.execute("select attempt from pgdurable.workflows where id = %s",
                         (wid,)).fetchone()
    assert epoch is not None
    conn.execute("select pgdurable.finish_workflow(%s, %s, %s, %s, %s)",
                 (wid, epoch[0], status, Jsonb(wid) if status == "succeeded" else None,
                  Jsonb({"type": "ValueError", "message": "no"}) if status == "failed"
                  else None))


def parent_state(conn: Conn, wid: str = "P") -> tuple[Any, ...]:
    row = conn.execute("select status, waiting_for, exists (select from pgdurable.ready "
                       "where workflow_id = w.id), (select open from pgdurable.joins "
                       "where parent_id = w.id) from pgdurable.workflows w where id = %s",
                       (wid,)).fetchone()
    assert row is not None
    return tuple(row)


def test_children_and_their_step_are_written_once(db: Conn) -> None:
    epoch = running_parent(db)
    assert start(db, "P", epoch, 0, ["P:0:0", "P:0:1"]) == ["P:0:0", "P:0:1"]
    assert start(db, "P", epoch, 0, ["other"]) == ["P:0:0", "P:0:1"]  # a replay: as recorded
    rows = db.execute("select id, parent_id, status from pgdurable.workflows "
                      "where parent_id is not null order by id").fetchall()
    assert rows == [("P:0:0", "P", "pending"), ("P:0:1", "P", "pending")]
    assert parent_state(db)[3] == 2
    with pytest.raises(psycopg.Error) as info:  # another step at that position
        wait(db, "P", epoch, 0, ["P:0:0"])
    assert info.value.sqlstate == "PD003"
    with pytest.raises(psycopg.Error) as info:  # a stale execution starts nothing
        start(db, "P", epoch + 1, 1, ["P:1"])
    assert info.value.sqlstate == "PD001"
    assert db.execute("select count(*) from pgdurable.workflows").fetchone() == (3,)


def test_the_last_child_wakes_the_parent_in_its_own_commit(db: Conn) -> None:
    epoch = running_parent(db)
    kids = start(db, "P", epoch, 0, ["k0", "k1", "k2"])
    assert wait(db, "P", epoch, 1, kids) == (False, True, None)
    assert parent_state(db) == ("pending", "children", False, 3)  # waiting, not claimable
    end(db, "k0")
    end(db, "k1", "failed")
    assert parent_state(db)[:3] == ("pending", "children", False)
    end(db, "k2")
    assert parent_state(db) == ("pending", None, True, 0)  # woken: claimable now
    epoch = int(db.execute("select epoch from pgdurable.claim('w', array['default'], 1, 300, "
                           "array['parent'])").fetchone()[0])  # type: ignore[index]
    ready, suspended, results = wait(db, "P", epoch, 1, kids)
    assert (ready, suspended) == (True, False)
    assert [(r["id"], r["status"], r["output"]) for r in results] == [
        ("k0", "succeeded", "k0"), ("k1", "failed", None), ("k2", "succeeded", "k2")]
    assert wait(db, "P", epoch, 1, ["ignored"])[2] == results  # a replay


def test_waiting_for_the_first_of_a_subset(db: Conn) -> None:
    epoch = running_parent(db)
    kids = start(db, "P", epoch, 0, ["k0", "k1", "k2"])
    assert wait(db, "P", epoch, 1, ["k1", "k2"], "first") == (False, True, None)
    end(db, "k0")  # not waited for: the parent sleeps on
    assert parent_state(db)[:2] == ("pending", "children")
    end(db, "k2")
    assert parent_state(db)[:2] == ("pending", None)
    epoch += 1
    db.execute("select pgdurable.claim('w', array['default'], 1, 300, array['parent'])")
    ready, _, results = wait(db, "P", epoch, 1, ["k1", "k2"], "first")
    assert ready and [(r["id"], r["index"]) for r in results] == [("k2", 1)]
    assert kids == ["k0", "k1", "k2"]


def test_a_resumed_child_counts_as_open_again(db: Conn) -> None:
    epoch = running_parent(db)
    start(db, "P", epoch, 0, ["k0"])
    end(db, "k0", "failed")
    assert parent_state(db)[3] == 0
    db.execute("select pgdurable.requeue('k0')")
    assert parent_state(db)[3] == 1
    assert wait(db, "P", epoch, 1, ["k0"]) == (False, True, None)
    end(db, "k0")
    assert parent_state(db)[:2] == ("pending", None)


def test_runs_that_are_not_children_are_waited_for_without_suspending(db: Conn) -> None:
    epoch = running_parent(db)
    db.execute("select pgdurable.enqueue('default', 'kid', p_id => 'stranger')")
    assert wait(db, "P", epoch, 0, ["stranger"]) == (False, False, None)
    assert parent_state(db)[:2] == ("running", None)
    with pytest.raises(psycopg.Error) as info:
        wait(db, "P", epoch, 0, ["nobody"])
    assert info.value.sqlstate == "PD004"
    for bad_mode, bad_ids in (("most", ["stranger"]), ("all", [])):
        with pytest.raises(psycopg.Error) as info:
            wait(db, "P", epoch, 0, bad_ids, bad_mode)
        assert info.value.sqlstate == "PD006"


def test_a_child_ending_while_the_parent_checks_is_never_lost(
        a: Conn, interleave: Interleaving) -> None:
    epoch = running_parent(a)
    kids = start(a, "P", epoch, 0, ["k0", "k1"])
    end(a, "k0")
    with a.transaction():  # a: the last child ends, not yet committed
        end(a, "k1")
        parent = interleave.waits(lambda c: wait(c, "P", epoch, 1, kids))
        # the parent's check waits on the joins row the child's end holds
    # a committed: the parent now sees both children ended and does not suspend
    assert parent.join()[:2] == (True, False)
    assert parent_state(a)[:2] == ("running", None)


def test_a_parent_suspending_while_the_child_ends_is_woken(
        a: Conn, interleave: Interleaving) -> None:
    epoch = running_parent(a)
    kids = start(a, "P", epoch, 0, ["k0"])
    a.execute("select pgdurable.acquire('k0', 'kid-worker', 300)")
    with a.transaction():  # a: the parent checks and suspends, not yet committed
        assert wait(a, "P", epoch, 1, kids) == (False, True, None)
        child = interleave.waits(lambda c: c.execute(
            "select pgdurable.finish_workflow('k0', 1, 'succeeded', '1', null)"))
    child.join()  # a committed: the child's end saw the wait and woke the parent
    assert parent_state(a)[:3] == ("pending", None, True)
