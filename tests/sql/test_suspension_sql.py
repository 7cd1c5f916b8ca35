"""The suspension primitive in SQL: `suspend(id, epoch, until, wait_for)` and `wake(id,
condition)`. A run waits for a time, a condition or both, holds nothing meanwhile, and is
claimable again exactly when the first of them happens; waits are fenced like every write."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
import pytest

from tests.support.sql import T0, Conn, at, set_now


def running(conn: Conn, wid: str = "r") -> int:
    conn.execute("select pgdurable.enqueue('default', 'flow', p_id => %s)", (wid,))
    row = conn.execute("select id, epoch from pgdurable.claim('w1', array['default'], 1, 30, "
                       "array['flow'])").fetchone()
    assert row is not None and row[0] == wid
    return int(row[1])


def claim(conn: Conn) -> list[str]:
    return [r[0] for r in conn.execute("select id from pgdurable.claim('w2', array['default'], "
                                       "10, 30, array['flow'])")]


def state(conn: Conn, wid: str = "r") -> tuple[Any, ...]:
    row = conn.execute("select status, owner, waiting_for, available_at, "
                       "exists (select from pgdurable.ready where workflow_id = w.id) "
                       "from pgdurable.workflows w where id = %s", (wid,)).fetchone()
    assert row is not None
    return tuple(row)


def suspend(conn: Conn, wid: str, epoch: int, until: datetime | None, wait_for: str | None
            ) -> None:
    conn.execute("select pgdurable.suspend(%s, %s, %s::timestamptz, %s::text)",
                 (wid, epoch, until, wait_for))


def wake(conn: Conn, wid: str, condition: str) -> bool:
    row = conn.execute("select pgdurable.wake(%s, %s)", (wid, condition)).fetchone()
    assert row is not None
    return bool(row[0])


def notified(conn: Conn) -> list[str]:
    return [n.payload for n in conn.notifies(timeout=0.2, stop_after=10)]


def test_waiting_for_a_condition_holds_no_ready_row_until_woken(db: Conn) -> None:
    epoch = running(db)
    suspend(db, "r", epoch, None, "approval")
    assert state(db) == ("pending", None, "approval", None, False)
    set_now(db, at(3600 * 24 * 365))
    assert claim(db) == []  # no time wakes it
    assert wake(db, "r", "another") is False  # only its own condition does
    assert state(db)[2] == "approval"
    db.execute("listen pgdurable")
    assert wake(db, "r", "approval") is True
    assert notified(db) == ["default"]
    assert state(db) == ("pending", None, None, at(3600 * 24 * 365), True)
    assert wake(db, "r", "approval") is False  # woken once
    assert claim(db) == ["r"]
    assert state(db)[:3] == ("running", "w2", None)


def test_a_condition_with_a_deadline_wakes_at_the_first_of_the_two(db: Conn) -> None:
    epoch = running(db, "timeout")
    suspend(db, "timeout", epoch, at(60), "approval")
    assert state(db, "timeout") == ("pending", None, "approval", at(60), True)
    assert claim(db) == []
    set_now(db, at(60))
    assert claim(db) == ["timeout"]  # the time came first
    assert state(db, "timeout")[:3] == ("running", "w2", None)  # running: no longer waiting

    epoch = running(db, "early")
    suspend(db, "early", epoch, at(600), "approval")
    assert wake(db, "early", "approval") is True  # the condition came first
    assert claim(db) == ["early"]


def test_waiting_only_for_a_time_is_a_sleep(db: Conn) -> None:
    epoch = running(db)
    suspend(db, "r", epoch, at(30), "sleep")
    assert state(db) == ("pending", None, "sleep", at(30), True)
    set_now(db, at(29))
    assert claim(db) == []
    set_now(db, at(30))
    assert claim(db) == ["r"]


def test_the_three_argument_form_waits_for_a_time_only(db: Conn) -> None:
    epoch = running(db)
    db.execute("select pgdurable.suspend('r', %s, %s)", (epoch, at(30)))
    assert state(db) == ("pending", None, None, at(30), True)


def test_a_stale_execution_cannot_suspend(db: Conn) -> None:
    epoch = running(db)
    with pytest.raises(psycopg.Error) as info:
        suspend(db, "r", epoch + 1, None, "approval")
    assert info.value.sqlstate == "PD001"
    assert state(db)[:3] == ("running", "w1", None)


@pytest.mark.parametrize(("until", "wait_for"), [
    (None, None), (T0, None), (None, ""), (None, "x" * 201),
])
def test_bad_suspensions_are_refused_and_change_nothing(
        db: Conn, until: datetime | None, wait_for: str | None) -> None:
    epoch = running(db)
    # (T0 stands for an infinite time: psycopg cannot send one)
    until_sql = "'infinity'::timestamptz" if until is not None else "null::timestamptz"
    with pytest.raises(psycopg.Error) as info:
        db.execute(f"select pgdurable.suspend('r', %s, {until_sql}, %s::text)",
                   (epoch, wait_for))
    assert info.value.sqlstate == "PD006"
    assert state(db)[:3] == ("running", "w1", None)


def test_waking_an_unknown_or_running_run_does_nothing(db: Conn) -> None:
    assert wake(db, "nobody", "approval") is False
    running(db)
    assert wake(db, "r", "approval") is False
    assert state(db)[:3] == ("running", "w1", None)


def test_a_wake_up_rolled_back_never_happened(db: Conn, dsn: str) -> None:
    epoch = running(db)
    suspend(db, "r", epoch, None, "approval")
    with psycopg.connect(dsn) as other:  # a transaction of its own, e.g. a trigger's
        assert other.execute("select pgdurable.wake('r', 'approval')").fetchone() == (True,)
        other.rollback()
    assert state(db)[:3] == ("pending", None, "approval")
    assert claim(db) == []


def test_the_waiting_state_is_what_reads_show_while_pending(db: Conn) -> None:
    from pgdurable.store.sql import query

    epoch = running(db)
    suspend(db, "r", epoch, at(30), "sleep")
    with db.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(query("get_workflow"), {"id": "r"})
        row = cur.fetchone()
    assert row is not None and row["waiting_for"] == "sleep"
    set_now(db, at(30))
    assert claim(db) == ["r"]
    with db.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(query("get_workflow"), {"id": "r"})
        row = cur.fetchone()
    assert row is not None and row["waiting_for"] is None
