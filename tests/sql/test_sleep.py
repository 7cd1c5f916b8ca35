"""Durable sleep in SQL: `sleep_step` records the wake-up time once (on the database's clock)
and reports what is left; `suspend` puts a running run back on its queue until then, fenced."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.support.sql import (
    Conn,
    at,
    call,
    claim,
    claim_one,
    enqueue,
    notifications,
    ready_ids,
    record,
    scalar,
    set_now,
    sqlstate,
    sweep,
    workflow,
)


def sleep_step(conn: Conn, wid: str, epoch: int, step_no: int, seconds: float | None
               ) -> tuple[Any, float]:
    row = call(conn, "select * from pgdurable.sleep_step(%s, %s, %s, %s)",
               (wid, epoch, step_no, seconds))[0]
    return row["wake_at"], float(row["remaining_seconds"])


def suspend(conn: Conn, wid: str, epoch: int, until: Any) -> None:
    conn.execute("select pgdurable.suspend(%s, %s, %s)", (wid, epoch, until))


def running(conn: Conn, wid: str = "s") -> int:
    enqueue(conn, id=wid)
    return int(claim_one(conn, "w1")["epoch"])


def test_the_wake_up_time_is_recorded_once_and_what_is_left_shrinks(db: Conn) -> None:
    epoch = running(db)
    assert sleep_step(db, "s", epoch, 0, 60) == (at(60), 60.0)
    set_now(db, at(45))
    assert sleep_step(db, "s", epoch, 0, 60) == (at(60), 15.0)  # replay: the recorded time
    set_now(db, at(90))
    assert sleep_step(db, "s", epoch, 0, 60) == (at(60), 0.0)
    row = call(db, "select name, status, output from pgdurable.steps where workflow_id = 's'")
    assert row == [{"name": "pgdurable.sleep", "status": "done",
                    "output": {"wake_at": "2030-01-01T00:01:00+00:00"}}]


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), None])
def test_a_bad_duration_is_refused(db: Conn, bad: float | None) -> None:
    epoch = running(db)
    with sqlstate("PD006"):
        sleep_step(db, "s", epoch, 0, bad)
    assert scalar(db, "select count(*) from pgdurable.steps") == 0


def test_a_stale_epoch_cannot_sleep_or_suspend(db: Conn) -> None:
    epoch = running(db)
    with sqlstate("PD001"):
        sleep_step(db, "s", epoch + 1, 0, 10)
    with sqlstate("PD001"):
        suspend(db, "s", epoch + 1, at(10))
    assert workflow(db, "s")["status"] == "running"


def test_another_step_at_the_position_is_non_determinism(db: Conn) -> None:
    epoch = running(db)
    record(db, "s", epoch, 0, "step", output=1)
    with sqlstate("PD003"):
        sleep_step(db, "s", epoch, 0, 10)


def test_a_suspended_run_is_claimed_again_only_once_due_with_a_new_epoch(db: Conn) -> None:
    epoch = running(db)
    wake_at, _ = sleep_step(db, "s", epoch, 0, 60)
    suspend(db, "s", epoch, wake_at)
    row = workflow(db, "s")
    assert (row["status"], row["owner"], row["lease_until"], row["available_at"]) \
        == ("pending", None, None, at(60))
    assert ready_ids(db) == {"s"}
    set_now(db, at(59))
    assert claim(db, "w2") == []
    set_now(db, at(60))
    again = claim(db, "w2")
    assert [(r["id"], r["epoch"], r["has_steps"]) for r in again] == [("s", epoch + 1, True)]
    assert sleep_step(db, "s", epoch + 1, 0, 60) == (at(60), 0.0)


def test_the_sweep_wakes_the_queue_of_a_run_whose_sleep_ended(dsn: str, db: Conn) -> None:
    epoch = running(db)
    suspend(db, "s", epoch, at(30))
    sweep(db)  # at 0: nothing due yet
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("listen pgdurable")
        set_now(db, at(31))
        assert sweep(db)["woken_queues"] == 1
        assert notifications(listener, timeout=5, expect=1) == ["default"]


def test_suspending_until_a_past_time_notifies_at_once(dsn: str, db: Conn) -> None:
    epoch = running(db)
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("listen pgdurable")
        suspend(db, "s", epoch, at(-1))
        assert notifications(listener, timeout=5, expect=1) == ["default"]
    with sqlstate("PD006"):
        suspend(db, "s", epoch, None)
