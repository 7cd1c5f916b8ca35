"""The PL/pgSQL state machine, called directly: clock, runs, leases, fencing, steps, cancel."""

from __future__ import annotations

from datetime import datetime, timedelta

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.support.sql import (
    NO_INPUTS,
    T0,
    Conn,
    acquire,
    begin,
    call,
    cancel,
    finish,
    heartbeat,
    load_steps,
    record,
    resume,
    set_now,
    sqlstate,
    start,
    steps,
    workflow,
)

LEASE = timedelta(seconds=30)


@pytest.fixture(autouse=True)
def frozen_clock(conn: Conn) -> None:
    set_now(conn, T0)


def now(conn: Conn) -> datetime:
    value = call(conn, "select pgdurable.now() as t")[0]["t"]
    assert isinstance(value, datetime)
    return value


# -- the clock --------------------------------------------------------------------------------


def test_now_follows_the_setting_and_reset_restores_the_wall_clock(conn: Conn) -> None:
    conn.execute("reset pgdurable.now")
    wall = call(conn, "select pgdurable.now() as a, clock_timestamp() as b")[0]
    assert wall["a"] <= wall["b"] < wall["a"] + timedelta(seconds=1)

    conn.execute("set pgdurable.now = '2031-05-06 07:08:09+00'")
    fixed = now(conn)
    assert fixed == datetime.fromisoformat("2031-05-06T07:08:09+00:00")
    assert now(conn) == fixed  # frozen: time moves only when the test moves it

    conn.execute("set pgdurable.now = '2031-05-06 07:08:39+00'")
    assert now(conn) - fixed == timedelta(seconds=30)

    conn.execute("reset pgdurable.now")
    back = call(conn, "select pgdurable.now() as a, clock_timestamp() as b")[0]
    assert back["a"] <= back["b"] < back["a"] + timedelta(seconds=1)
    assert back["a"].year != 2031


def test_set_local_applies_to_one_transaction_only(conn: Conn) -> None:
    with conn.transaction():
        conn.execute("set local pgdurable.now = '2040-01-01 00:00:00+00'")
        assert now(conn).year == 2040
    assert now(conn) == T0  # the session setting of the fixture is back


def test_the_clock_is_per_session(conn: Conn, dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as other:
        assert call(other, "select pgdurable.now() as t")[0]["t"] != T0
    assert now(conn) == T0


def test_new_run_timestamps_come_from_the_clock(conn: Conn) -> None:
    start(conn)
    row = workflow(conn, "w1")
    assert row["created_at"] == row["started_at"] == row["updated_at"] == T0
    assert row["lease_until"] == T0 + LEASE
    assert row["finished_at"] is None


# -- start_workflow ---------------------------------------------------------------------------


def test_start_creates_a_running_run_with_epoch_1(conn: Conn) -> None:
    inputs = {"args": [1, "x"], "kwargs": {"k": [True, None]}}
    got = start(conn, "w1", "flow", "worker-a", 30, inputs)
    assert got["id"] == "w1"
    assert got["name"] == "flow"
    assert got["status"] == "running"
    assert got["epoch"] == 1
    assert got["started"] is True
    assert got["inputs"] == inputs
    assert int(got["xact_id"]) > 0

    row = workflow(conn, "w1")
    assert row["status"] == "running"
    assert row["attempt"] == 1
    assert row["owner"] == "worker-a"
    assert row["inputs"] == inputs
    assert row["output"] is None and row["error"] is None
    assert steps(conn, "w1") == []


def test_start_of_a_live_run_returns_it_without_taking_over(conn: Conn) -> None:
    start(conn, inputs={"args": [1], "kwargs": {}})
    set_now(conn, T0 + timedelta(seconds=29))
    again = start(conn, owner="worker-b", inputs={"args": [2], "kwargs": {}})
    assert again["started"] is False
    assert again["epoch"] == 1
    assert again["status"] == "running"
    assert again["inputs"] == {"args": [1], "kwargs": {}}  # the first call's inputs win
    row = workflow(conn, "w1")
    assert (row["owner"], row["attempt"], row["lease_until"]) == ("worker-a", 1, T0 + LEASE)


def test_start_at_the_exact_lease_end_does_not_take_over(conn: Conn) -> None:
    start(conn)
    set_now(conn, T0 + LEASE)
    assert start(conn, owner="worker-b")["started"] is False
    assert workflow(conn, "w1")["owner"] == "worker-a"


def test_start_takes_over_once_the_lease_expired(conn: Conn) -> None:
    start(conn)
    later = T0 + LEASE + timedelta(microseconds=1)
    set_now(conn, later)
    again = start(conn, owner="worker-b", lease=10)
    assert again["started"] is True
    assert again["epoch"] == 2
    assert again["status"] == "running"
    row = workflow(conn, "w1")
    assert row["owner"] == "worker-b"
    assert row["attempt"] == 2
    assert row["lease_until"] == later + timedelta(seconds=10)
    assert row["started_at"] == T0  # first start is kept
    assert row["updated_at"] == later


def test_start_of_a_finished_run_returns_it(conn: Conn) -> None:
    start(conn)
    finish(conn, "w1", 1, "succeeded", output=42)
    set_now(conn, T0 + timedelta(days=1))
    again = start(conn, owner="worker-b")
    assert again["started"] is False
    assert again["status"] == "succeeded"
    assert again["epoch"] == 1
    assert workflow(conn, "w1")["output"] == 42


def test_start_of_a_pending_run_leaves_it_to_its_queue(conn: Conn) -> None:
    # Issue 9 item 7: a pending (queued, delayed, on a paused queue) run is not taken over by
    # `start_workflow` (it used to be acquired and run in the caller's process).
    conn.execute("insert into pgdurable.workflows (id, name) values ('p1', 'flow')")
    got = start(conn, "p1", owner="worker-b")
    assert (got["started"], got["epoch"], got["status"]) == (False, 0, "pending")
    row = workflow(conn, "p1")
    assert (row["owner"], row["started_at"]) == (None, None)


@pytest.mark.parametrize("status", ["running", "succeeded"])
def test_same_id_with_another_name_is_pd002(conn: Conn, status: str) -> None:
    start(conn, "w1", "flow")
    if status == "succeeded":
        finish(conn, "w1", 1)
    set_now(conn, T0 + timedelta(hours=1))  # even an expired lease is not taken over
    with sqlstate("PD002"):
        start(conn, "w1", "other", owner="worker-b")
    row = workflow(conn, "w1")
    assert (row["name"], row["attempt"], row["status"]) == ("flow", 1, status)


@pytest.mark.parametrize("lease", [0, -1, -0.001, None])
def test_start_with_lease_not_positive_is_pd006(conn: Conn, lease: float | None) -> None:
    with sqlstate("PD006"):
        start(conn, lease=lease)
    assert call(conn, "select count(*) as n from pgdurable.workflows")[0]["n"] == 0


# -- acquire ----------------------------------------------------------------------------------


def test_acquire_respects_a_live_lease(conn: Conn) -> None:
    start(conn)
    set_now(conn, T0 + timedelta(seconds=29))
    assert acquire(conn, "w1", "worker-b") == []
    assert workflow(conn, "w1")["attempt"] == 1


def test_acquire_takes_an_expired_lease_with_a_new_epoch(conn: Conn) -> None:
    start(conn, inputs={"args": [7], "kwargs": {}})
    set_now(conn, T0 + timedelta(minutes=1))
    got = acquire(conn, "w1", "worker-b", 5)
    assert got == [{"id": "w1", "name": "flow", "status": "running", "epoch": 2,
                    "inputs": {"args": [7], "kwargs": {}}}]
    row = workflow(conn, "w1")
    assert row["owner"] == "worker-b"
    assert row["lease_until"] == T0 + timedelta(minutes=1, seconds=5)
    # a third worker after that lease expires again: epoch 3
    set_now(conn, T0 + timedelta(minutes=2))
    assert acquire(conn, "w1", "worker-c")[0]["epoch"] == 3


def test_acquire_twice_in_a_row_only_the_first_wins(conn: Conn) -> None:
    start(conn)
    set_now(conn, T0 + timedelta(minutes=1))
    assert acquire(conn, "w1", "worker-b")[0]["epoch"] == 2
    assert acquire(conn, "w1", "worker-c") == []
    assert workflow(conn, "w1")["owner"] == "worker-b"


def test_acquire_of_pending_sets_started_at(conn: Conn) -> None:
    conn.execute("insert into pgdurable.workflows (id, name) values ('p1', 'flow')")
    assert workflow(conn, "p1")["started_at"] is None
    got = acquire(conn, "p1", "worker-b")
    assert got[0]["epoch"] == 1
    assert workflow(conn, "p1")["started_at"] == T0


@pytest.mark.parametrize("how", ["succeeded", "failed", "cancelled"])
def test_acquire_never_takes_a_finished_run(conn: Conn, how: str) -> None:
    start(conn)
    if how == "cancelled":
        cancel(conn, "w1")
    else:
        finish(conn, "w1", 1, how)
    set_now(conn, T0 + timedelta(days=1))
    assert acquire(conn, "w1", "worker-b") == []
    assert workflow(conn, "w1")["status"] == how


def test_acquire_of_an_unknown_id_returns_nothing(conn: Conn) -> None:
    assert acquire(conn, "nope", "worker-b") == []


@pytest.mark.parametrize("lease", [0, -5, None])
def test_acquire_with_lease_not_positive_is_pd006(conn: Conn, lease: float | None) -> None:
    conn.execute("insert into pgdurable.workflows (id, name) values ('p1', 'flow')")
    with sqlstate("PD006"):
        acquire(conn, "p1", "worker-b", lease)


# -- resume -----------------------------------------------------------------------------------


def _failed_run_with_a_step(conn: Conn) -> None:
    start(conn)
    record(conn, "w1", 1, 0, "fetch", output={"v": 1})
    finish(conn, "w1", 1, "failed", error={"type": "ValueError", "message": "boom"})


def test_resume_of_a_failed_run_keeps_steps_and_clears_the_error(conn: Conn) -> None:
    _failed_run_with_a_step(conn)
    before = steps(conn, "w1")
    set_now(conn, T0 + timedelta(seconds=5))
    got = resume(conn, "w1", "worker-b", 30)
    assert len(got) == 1
    assert (got[0]["status"], got[0]["epoch"]) == ("running", 2)
    row = workflow(conn, "w1")
    assert row["status"] == "running"
    assert row["error"] is None
    assert row["finished_at"] is None
    assert row["owner"] == "worker-b"
    assert row["lease_until"] == T0 + timedelta(seconds=35)
    assert steps(conn, "w1") == before
    assert [s["output"] for s in load_steps(conn, "w1", 2)] == [{"v": 1}]


def test_resume_of_a_cancelled_run_starts_a_new_epoch(conn: Conn) -> None:
    start(conn)
    record(conn, "w1", 1, 0, "fetch", output=1)
    assert cancel(conn, "w1") == "cancelled"
    got = resume(conn, "w1", "worker-b")
    assert got[0]["epoch"] == 2
    row = workflow(conn, "w1")
    assert (row["status"], row["owner"], row["finished_at"]) == ("running", "worker-b", None)
    assert len(steps(conn, "w1")) == 1
    with sqlstate("PD001"):
        record(conn, "w1", 1, 1, "next")
    record(conn, "w1", 2, 1, "next")


def test_resume_respects_a_live_lease_and_takes_an_expired_one(conn: Conn) -> None:
    start(conn)
    assert resume(conn, "w1", "worker-b") == []
    assert workflow(conn, "w1")["owner"] == "worker-a"
    set_now(conn, T0 + timedelta(minutes=5))
    assert resume(conn, "w1", "worker-b")[0]["epoch"] == 2


def test_resume_leaves_a_succeeded_run_alone(conn: Conn) -> None:
    start(conn)
    finish(conn, "w1", 1, "succeeded", output="done")
    assert resume(conn, "w1", "worker-b") == []
    row = workflow(conn, "w1")
    assert (row["status"], row["output"], row["attempt"]) == ("succeeded", "done", 1)


def test_resume_of_an_unknown_id_is_pd004(conn: Conn) -> None:
    with sqlstate("PD004"):
        resume(conn, "nope", "worker-b")


def test_resume_lets_the_step_that_failed_the_run_run_again(conn: Conn) -> None:
    start(conn)
    record(conn, "w1", 1, 0, "fetch", output=1)
    record(conn, "w1", 1, 1, "charge", "failed", error={"type": "RuntimeError", "message": "x"})
    finish(conn, "w1", 1, "failed", error={"type": "RuntimeError", "message": "x"})
    resume(conn, "w1", "worker-b")
    again = record(conn, "w1", 2, 1, "charge", output="ok")
    assert (again["status"], again["inserted"]) == ("done", True)


def test_resume_with_lease_not_positive_is_pd006(conn: Conn) -> None:
    _failed_run_with_a_step(conn)
    with sqlstate("PD006"):
        resume(conn, "w1", "worker-b", -1)


# -- heartbeat --------------------------------------------------------------------------------


def test_heartbeat_renews_only_the_owners_running_runs(conn: Conn) -> None:
    start(conn, "a1", owner="worker-a")
    start(conn, "a2", owner="worker-a")
    start(conn, "a3", owner="worker-a")
    finish(conn, "a3", 1, "succeeded")
    start(conn, "b1", owner="worker-b")

    set_now(conn, T0 + timedelta(seconds=20))
    assert heartbeat(conn, "worker-a", 30) == 2
    lease = {r["id"]: r["lease_until"] for r in call(
        conn, "select id, lease_until from pgdurable.workflows")}
    assert lease == {"a1": T0 + timedelta(seconds=50), "a2": T0 + timedelta(seconds=50),
                     "a3": None, "b1": T0 + LEASE}
    assert heartbeat(conn, "nobody", 30) == 0


def test_heartbeat_keeps_a_run_from_being_taken_over(conn: Conn) -> None:
    start(conn)
    set_now(conn, T0 + timedelta(seconds=25))
    assert heartbeat(conn, "worker-a") == 1
    set_now(conn, T0 + timedelta(seconds=45))  # past the first lease, inside the renewed one
    assert acquire(conn, "w1", "worker-b") == []


def test_heartbeat_of_a_superseded_owner_renews_nothing(conn: Conn) -> None:
    start(conn)
    set_now(conn, T0 + timedelta(minutes=1))
    acquire(conn, "w1", "worker-b", 30)
    assert heartbeat(conn, "worker-a") == 0
    assert heartbeat(conn, "worker-b") == 1
    start(conn, "w2", owner="worker-c")
    cancel(conn, "w2")
    assert heartbeat(conn, "worker-c") == 0


@pytest.mark.parametrize("lease", [0, -5, None])
def test_heartbeat_with_lease_not_positive_is_pd006(conn: Conn, lease: float | None) -> None:
    start(conn)
    with sqlstate("PD006"):
        heartbeat(conn, "worker-a", lease)


# -- fencing ----------------------------------------------------------------------------------


def _taken_over(conn: Conn) -> None:
    start(conn)
    set_now(conn, T0 + timedelta(minutes=1))
    assert acquire(conn, "w1", "worker-b")[0]["epoch"] == 2


def test_check_epoch_accepts_the_current_epoch_only(conn: Conn) -> None:
    start(conn)
    conn.execute("select pgdurable.check_epoch('w1', 1)")
    for wrong in (0, 2):
        with sqlstate("PD001"):
            conn.execute("select pgdurable.check_epoch('w1', %s)", (wrong,))
    with sqlstate("PD004"):
        conn.execute("select pgdurable.check_epoch('nope', 1)")


def test_check_epoch_error_explains_itself(conn: Conn) -> None:
    _taken_over(conn)
    with pytest.raises(psycopg.Error) as info:
        conn.execute("select pgdurable.check_epoch('w1', 1)")
    assert info.value.sqlstate == "PD001"
    assert "epoch 1 is stale" in (info.value.diag.message_primary or "")
    assert "current epoch 2" in (info.value.diag.message_primary or "")
    assert info.value.diag.message_hint


def test_stale_epoch_cannot_record_a_step(conn: Conn) -> None:
    _taken_over(conn)
    with sqlstate("PD001"):
        record(conn, "w1", 1, 0, "fetch", output="zombie")
    assert steps(conn, "w1") == []
    assert record(conn, "w1", 2, 0, "fetch", output="owner")["inserted"] is True


def test_stale_epoch_cannot_begin_a_step_or_load_steps(conn: Conn) -> None:
    _taken_over(conn)
    with sqlstate("PD001"):
        begin(conn, "w1", 1, 0, "fetch")
    with sqlstate("PD001"):
        load_steps(conn, "w1", 1)
    assert steps(conn, "w1") == []


def test_stale_epoch_cannot_finish_the_run(conn: Conn) -> None:
    _taken_over(conn)
    with sqlstate("PD001"):
        finish(conn, "w1", 1, "succeeded", output="zombie")
    row = workflow(conn, "w1")
    assert (row["status"], row["output"], row["owner"]) == ("running", None, "worker-b")
    finish(conn, "w1", 2, "succeeded", output="owner")
    assert workflow(conn, "w1")["output"] == "owner"


def test_a_finished_run_refuses_further_writes(conn: Conn) -> None:
    start(conn)
    finish(conn, "w1", 1, "succeeded", output=1)
    with sqlstate("PD001"):
        record(conn, "w1", 1, 0, "late")
    with sqlstate("PD001"):
        finish(conn, "w1", 1, "failed", error={"message": "late"})
    assert workflow(conn, "w1")["status"] == "succeeded"


def test_a_null_epoch_is_refused(conn: Conn) -> None:
    start(conn)
    try:
        with sqlstate("PD001"):
            finish(conn, "w1", None, "succeeded", output="nobody's")
    finally:
        assert workflow(conn, "w1")["status"] == "running"


# -- record_step ------------------------------------------------------------------------------


def test_record_step_inserts_once(conn: Conn) -> None:
    start(conn)
    set_now(conn, T0 + timedelta(seconds=3))
    first = record(conn, "w1", 1, 0, "fetch", output={"v": 1})
    assert first == {"status": "done", "output": {"v": 1}, "error": None, "inserted": True}
    second = record(conn, "w1", 1, 0, "fetch", output={"v": 2})
    assert second == {"status": "done", "output": {"v": 1}, "error": None, "inserted": False}
    (row,) = steps(conn, "w1")
    assert row["step_no"] == 0 and row["name"] == "fetch" and row["status"] == "done"
    assert row["output"] == {"v": 1}
    assert row["attempt"] == 1
    assert row["started_at"] == row["finished_at"] == T0 + timedelta(seconds=3)


def test_a_recorded_failure_wins_over_a_later_success(conn: Conn) -> None:
    start(conn)
    err = {"type": "ValueError", "message": "bad", "args": ["bad"]}
    assert record(conn, "w1", 1, 0, "fetch", "failed", error=err)["inserted"] is True
    again = record(conn, "w1", 1, 0, "fetch", "done", output=5)
    assert again == {"status": "failed", "output": None, "error": err, "inserted": False}


def test_a_new_epoch_replays_the_previous_epochs_step(conn: Conn) -> None:
    start(conn)
    record(conn, "w1", 1, 0, "fetch", output="first")
    set_now(conn, T0 + timedelta(minutes=1))
    acquire(conn, "w1", "worker-b")
    again = record(conn, "w1", 2, 0, "fetch", output="second")
    assert (again["output"], again["inserted"]) == ("first", False)
    assert steps(conn, "w1")[0]["attempt"] == 1
    assert [(s["step_no"], s["output"]) for s in load_steps(conn, "w1", 2)] == [(0, "first")]


def test_record_step_with_json_null_and_scalars(conn: Conn) -> None:
    start(conn)
    conn.execute(
        "select * from pgdurable.record_step('w1', 1, 0, 's', 'done', %s, null)", (Jsonb(None),)
    )
    record(conn, "w1", 1, 1, "s", output=[1, "two", 3.5, False])
    outputs = [s["output"] for s in load_steps(conn, "w1", 1)]
    assert outputs == [None, [1, "two", 3.5, False]]


def test_another_name_at_a_recorded_position_is_pd003(conn: Conn) -> None:
    start(conn)
    record(conn, "w1", 1, 0, "fetch", output=1)
    with pytest.raises(psycopg.Error) as info:
        record(conn, "w1", 1, 0, "charge", output=2)
    assert info.value.sqlstate == "PD003"
    assert "'fetch'" in str(info.value) and "'charge'" in str(info.value)
    (row,) = steps(conn, "w1")
    assert (row["name"], row["output"]) == ("fetch", 1)


@pytest.mark.parametrize("status", ["started", "succeeded", "bogus", ""])
def test_record_step_with_an_invalid_status_is_pd006(conn: Conn, status: str) -> None:
    start(conn)
    with sqlstate("PD006"):
        record(conn, "w1", 1, 0, "fetch", status)
    assert steps(conn, "w1") == []


def test_record_step_with_a_null_status_is_pd006(conn: Conn) -> None:
    start(conn)
    with sqlstate("PD006"):
        record(conn, "w1", 1, 0, "fetch", None)


def test_record_step_of_an_unknown_run_is_pd004(conn: Conn) -> None:
    with sqlstate("PD004"):
        record(conn, "nope", 1, 0, "fetch")


def test_step_numbers_are_independent_positions(conn: Conn) -> None:
    start(conn)
    for n in (2, 0, 1):
        record(conn, "w1", 1, n, f"s{n}", output=n)
    assert [(s["step_no"], s["name"]) for s in load_steps(conn, "w1", 1)] == [
        (0, "s0"), (1, "s1"), (2, "s2")]
    with sqlstate("23514"):  # check (step_no >= 0)
        record(conn, "w1", 1, -1, "neg")


# -- begin_step (at-most-once intents) --------------------------------------------------------


def test_begin_step_commits_an_intent_then_reports_it(conn: Conn) -> None:
    start(conn)
    first = begin(conn, "w1", 1, 0, "charge")
    assert first == {"status": "started", "output": None, "error": None, "is_new": True}
    (row,) = steps(conn, "w1")
    assert (row["status"], row["attempt"], row["finished_at"]) == ("started", 1, None)

    second = begin(conn, "w1", 1, 0, "charge")
    assert second == {"status": "started", "output": None, "error": None, "is_new": False}


def test_the_same_epoch_completes_its_own_intent(conn: Conn) -> None:
    start(conn)
    begin(conn, "w1", 1, 0, "charge")
    set_now(conn, T0 + timedelta(seconds=2))
    done = record(conn, "w1", 1, 0, "charge", output={"id": "ch_1"})
    assert done == {"status": "done", "output": {"id": "ch_1"}, "error": None, "inserted": True}
    (row,) = steps(conn, "w1")
    assert (row["status"], row["output"]) == ("done", {"id": "ch_1"})
    assert row["started_at"] == T0 and row["finished_at"] == T0 + timedelta(seconds=2)
    assert begin(conn, "w1", 1, 0, "charge") == {
        "status": "done", "output": {"id": "ch_1"}, "error": None, "is_new": False}


def test_an_intent_of_a_crashed_epoch_stays_unknown(conn: Conn) -> None:
    start(conn)
    begin(conn, "w1", 1, 0, "charge")  # ... and worker-a dies in the body
    set_now(conn, T0 + timedelta(minutes=1))
    acquire(conn, "w1", "worker-b")
    again = begin(conn, "w1", 2, 0, "charge")
    assert (again["status"], again["is_new"]) == ("started", False)
    # the new epoch cannot overwrite the unknown outcome either
    rec = record(conn, "w1", 2, 0, "charge", output="retried")
    assert (rec["status"], rec["output"], rec["inserted"]) == ("started", None, False)
    (row,) = steps(conn, "w1")
    assert (row["status"], row["attempt"]) == ("started", 1)


def test_begin_step_with_another_name_is_pd003(conn: Conn) -> None:
    start(conn)
    begin(conn, "w1", 1, 0, "charge")
    with sqlstate("PD003"):
        begin(conn, "w1", 1, 0, "refund")
    with sqlstate("PD003"):
        record(conn, "w1", 1, 0, "refund")


# -- finish_workflow --------------------------------------------------------------------------


def test_finish_succeeded_records_output_and_releases_the_lease(conn: Conn) -> None:
    start(conn)
    set_now(conn, T0 + timedelta(seconds=9))
    finish(conn, "w1", 1, "succeeded", output={"total": 3})
    row = workflow(conn, "w1")
    assert row["status"] == "succeeded"
    assert row["output"] == {"total": 3}
    assert row["error"] is None
    assert row["owner"] is None and row["lease_until"] is None
    assert row["finished_at"] == row["updated_at"] == T0 + timedelta(seconds=9)


def test_finish_failed_records_the_error(conn: Conn) -> None:
    start(conn)
    err = {"type": "KeyError", "message": "'x'", "traceback": "..."}
    finish(conn, "w1", 1, "failed", error=err)
    row = workflow(conn, "w1")
    assert (row["status"], row["error"], row["output"]) == ("failed", err, None)


@pytest.mark.parametrize("status", ["cancelled", "running", "pending", "done", ""])
def test_finish_with_an_invalid_status_is_pd006(conn: Conn, status: str) -> None:
    start(conn)
    with sqlstate("PD006"):
        finish(conn, "w1", 1, status)
    assert workflow(conn, "w1")["status"] == "running"


def test_finish_with_a_null_status_is_pd006(conn: Conn) -> None:
    start(conn)
    with sqlstate("PD006"):
        finish(conn, "w1", 1, None)


# -- cancel -----------------------------------------------------------------------------------


def test_cancel_a_running_run_fences_its_owner(conn: Conn) -> None:
    start(conn)
    record(conn, "w1", 1, 0, "fetch", output=1)
    set_now(conn, T0 + timedelta(seconds=4))
    assert cancel(conn, "w1") == "cancelled"
    row = workflow(conn, "w1")
    assert row["status"] == "cancelled"
    assert row["owner"] is None and row["lease_until"] is None
    assert row["finished_at"] == T0 + timedelta(seconds=4)
    assert row["attempt"] == 1
    with sqlstate("PD001"):
        record(conn, "w1", 1, 1, "next")
    with sqlstate("PD001"):
        finish(conn, "w1", 1, "succeeded")
    assert heartbeat(conn, "worker-a") == 0
    assert len(steps(conn, "w1")) == 1  # recorded steps are kept for a later resume
    set_now(conn, T0 + timedelta(days=1))
    assert acquire(conn, "w1", "worker-b") == []


def test_cancel_a_pending_run(conn: Conn) -> None:
    conn.execute("insert into pgdurable.workflows (id, name) values ('p1', 'flow')")
    assert cancel(conn, "p1") == "cancelled"
    assert acquire(conn, "p1", "worker-b") == []


@pytest.mark.parametrize("status", ["succeeded", "failed"])
def test_cancel_a_finished_run_changes_nothing(conn: Conn, status: str) -> None:
    start(conn)
    finish(conn, "w1", 1, status, output=1 if status == "succeeded" else None)
    before = workflow(conn, "w1")
    set_now(conn, T0 + timedelta(hours=1))
    assert cancel(conn, "w1") == status
    assert workflow(conn, "w1") == before


def test_cancel_twice_is_idempotent(conn: Conn) -> None:
    start(conn)
    assert cancel(conn, "w1") == "cancelled"
    before = workflow(conn, "w1")
    assert cancel(conn, "w1") == "cancelled"
    assert workflow(conn, "w1") == before


def test_cancel_of_an_unknown_id_is_pd004(conn: Conn) -> None:
    with sqlstate("PD004"):
        cancel(conn, "nope")


# -- a whole run through the functions --------------------------------------------------------


def test_a_crashed_run_continues_from_its_checkpoints(conn: Conn) -> None:
    got = start(conn, "order-1", "checkout", "worker-a", 30, {"args": [42], "kwargs": {}})
    epoch = got["epoch"]
    assert load_steps(conn, "order-1", epoch) == []
    record(conn, "order-1", epoch, 0, "reserve", output={"ok": True})
    begin(conn, "order-1", epoch, 1, "charge")
    record(conn, "order-1", epoch, 1, "charge", output="ch_1")
    # worker-a dies; a caller with the same id after the lease finds and takes the run over
    set_now(conn, T0 + timedelta(minutes=1))
    again = start(conn, "order-1", "checkout", "worker-b", 30, {"args": [0], "kwargs": {}})
    assert (again["started"], again["epoch"], again["inputs"]) == (
        True, 2, {"args": [42], "kwargs": {}})
    replay = load_steps(conn, "order-1", 2)
    assert [(s["name"], s["status"], s["output"]) for s in replay] == [
        ("reserve", "done", {"ok": True}), ("charge", "done", "ch_1")]
    record(conn, "order-1", 2, 2, "ship", output=None)
    finish(conn, "order-1", 2, "succeeded", output="shipped")
    row = workflow(conn, "order-1")
    assert (row["status"], row["output"], row["attempt"]) == ("succeeded", "shipped", 2)
    assert [s["attempt"] for s in steps(conn, "order-1")] == [1, 1, 2]


def test_inputs_default_shape(conn: Conn) -> None:
    conn.execute("insert into pgdurable.workflows (id, name) values ('p1', 'flow')")
    assert workflow(conn, "p1")["inputs"] == NO_INPUTS


def test_heartbeat_renews_only_the_runs_it_lists(conn: Conn) -> None:
    # A run whose execution ended without finishing is no longer listed by its worker: its lease
    # runs out and another worker can take it over, though its old owner still lives.
    start(conn, "a1", owner="worker-a")
    start(conn, "a2", owner="worker-a")
    set_now(conn, T0 + timedelta(seconds=20))
    assert heartbeat(conn, "worker-a", 30, ids=["a1"]) == 1
    set_now(conn, T0 + LEASE + timedelta(seconds=1))
    assert acquire(conn, "a1", "worker-b") == []
    assert [r["epoch"] for r in acquire(conn, "a2", "worker-b")] == [2]
