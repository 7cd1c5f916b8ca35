"""Cron schedules in SQL: declaring, matching a minute in a time zone, and firing each tick
exactly once (skipping or catching up missed ticks), also with two sweepers at once: stepped
through explicit interleavings, and released together minute after minute."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.support.interleave import Interleaving
from tests.support.sql import (
    NO_INPUTS,
    T0,
    Conn,
    at,
    call,
    claim_one,
    declare,
    declare_schedule,
    enqueue,
    fire,
    last_tick,
    minute,
    scalar,
    scheduled_ids,
    set_now,
    sqlstate,
    sweep,
    tick_id,
    workflow,
)


def matches(conn: Conn, name: str, tick: datetime) -> bool:
    return bool(scalar(conn, "select pgdurable.cron_matches(s, %s) from pgdurable.schedules s "
                             "where s.name = %s", (tick, name)))


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# -- declaring ------------------------------------------------------------------------------------


def test_declare_stores_the_schedule_from_the_current_minute(db: Conn) -> None:
    set_now(db, at(42.5))
    declare(db, "reports")
    declare_schedule(db, "nightly", "0 3 * * *", workflow_name="reports.build", queue="reports",
                     inputs={"args": ["acme"], "kwargs": {}}, timezone="Europe/Paris")
    row = call(db, "select * from pgdurable.schedules")[0]
    assert (row["name"], row["cron"], row["workflow_name"], row["queue"], row["timezone"],
            row["catch_up"]) == ("nightly", "0 3 * * *", "reports.build", "reports",
                                 "Europe/Paris", False)
    assert row["inputs"] == {"args": ["acme"], "kwargs": {}}
    assert (row["minutes"], row["hours"], row["days_restricted"]) == ([0], [3], False)
    assert row["last_tick"] == T0  # ticks before the declaration never fire


def test_declare_refuses_an_unknown_time_zone(db: Conn) -> None:
    with sqlstate("PD006"):
        declare_schedule(db, "s", "* * * * *", timezone="Mars/Olympus_Mons")
    assert scalar(db, "select count(*) from pgdurable.schedules") == 0


def test_declare_refuses_an_unknown_queue(db: Conn) -> None:
    with sqlstate("PD007"):
        declare_schedule(db, "s", "* * * * *", queue="nope")


def test_redeclaring_changes_the_schedule_but_not_its_progress(db: Conn) -> None:
    declare_schedule(db, "s", "*/5 * * * *")
    set_now(db, minute(5))
    assert fire(db) == 1
    updated = scalar(db, "select updated_at from pgdurable.schedules")

    set_now(db, minute(7))
    declare_schedule(db, "s", "*/5 * * * *")  # a redeploy with the same code: no write
    assert scalar(db, "select updated_at from pgdurable.schedules") == updated
    declare_schedule(db, "s", "*/2 * * * *", catch_up=True)
    row = call(db, "select cron, minutes, catch_up, last_tick, updated_at "
                   "from pgdurable.schedules")[0]
    assert (row["cron"], row["minutes"][:3], row["catch_up"]) == ("*/2 * * * *", [0, 2, 4], True)
    assert row["last_tick"] == minute(5)  # already fired ticks do not fire again
    assert row["updated_at"] == minute(7)
    assert fire(db) == 1  # minute 6 (catch-up from the last tick), then 7 does not match
    assert scheduled_ids(db) == [tick_id("s", minute(5)), tick_id("s", minute(6))]


@pytest.mark.parametrize(("workflow_name", "inputs"), [
    ("flow", []), ("flow", "not an object"), ("", NO_INPUTS)])
def test_declare_refuses_a_schedule_that_could_never_fire(
    db: Conn, workflow_name: str, inputs: Any
) -> None:
    spec = ("* * * * *", [list(range(60)), list(range(24)), list(range(1, 32)),
                          list(range(1, 13)), list(range(7))])
    with sqlstate("PD006"):
        db.execute(
            "select pgdurable.declare_schedule('bad', %s, %s, 'default', %s, 'UTC', false, "
            "%s::smallint[], %s::smallint[], %s::smallint[], %s::smallint[], %s::smallint[], "
            "false, false)",
            (spec[0], workflow_name, Jsonb(inputs), *spec[1]))


# -- matching -------------------------------------------------------------------------------------


def test_cron_matches_minutes_hours_and_weekdays(db: Conn) -> None:
    declare_schedule(db, "weekday", "30 9 * * mon-fri")
    assert matches(db, "weekday", utc("2030-01-07 09:30"))  # Monday
    assert matches(db, "weekday", utc("2030-01-04 09:30"))  # Friday
    assert not matches(db, "weekday", utc("2030-01-05 09:30"))  # Saturday
    assert not matches(db, "weekday", utc("2030-01-07 09:31"))
    assert not matches(db, "weekday", utc("2030-01-07 10:30"))


def test_when_both_day_fields_are_restricted_either_one_fires(db: Conn) -> None:
    declare_schedule(db, "either", "0 0 13 * fri")
    assert matches(db, "either", utc("2030-01-13 00:00"))  # the 13th, a Sunday
    assert matches(db, "either", utc("2030-01-04 00:00"))  # a Friday, the 4th
    assert not matches(db, "either", utc("2030-01-05 00:00"))
    declare_schedule(db, "day-only", "0 0 13 * *")
    assert not matches(db, "day-only", utc("2030-01-04 00:00"))
    declare_schedule(db, "month", "0 0 * feb *")
    assert not matches(db, "month", utc("2030-01-13 00:00"))
    assert matches(db, "month", utc("2030-02-13 00:00"))


def test_cron_matches_in_the_schedule_time_zone(db: Conn) -> None:
    declare_schedule(db, "paris", "0 9 * * *", timezone="Europe/Paris")
    assert matches(db, "paris", utc("2030-01-10 08:00"))  # winter: UTC+1
    assert not matches(db, "paris", utc("2030-01-10 09:00"))
    assert matches(db, "paris", utc("2030-07-10 07:00"))  # summer: UTC+2
    declare_schedule(db, "ny-monthly", "0 0 1 * *", timezone="America/New_York")
    assert matches(db, "ny-monthly", utc("2030-02-01 05:00"))  # midnight EST
    assert not matches(db, "ny-monthly", utc("2030-02-01 00:00"))  # still Jan 31 there
    declare_schedule(db, "kolkata", "30 * * * *", timezone="Asia/Kolkata")  # UTC+05:30
    assert matches(db, "kolkata", utc("2030-01-10 08:00"))
    assert not matches(db, "kolkata", utc("2030-01-10 08:30"))


# -- firing ---------------------------------------------------------------------------------------


def test_each_tick_starts_one_run_with_a_deterministic_id(db: Conn) -> None:
    declare(db, "reports")
    inputs = {"args": [1, "x"], "kwargs": {"k": True}}
    declare_schedule(db, "five", "*/5 * * * *", workflow_name="reports.build", queue="reports",
                     inputs=inputs)
    set_now(db, at(30))
    assert fire(db) == 0  # the declaration minute is done
    set_now(db, minute(5) + timedelta(seconds=20))
    assert fire(db) == 1
    assert fire(db) == 0  # the same minute again
    wid = tick_id("five", minute(5))
    assert wid == "schedule:five:2030-01-01T00:05Z"
    assert scheduled_ids(db) == [wid]
    run = workflow(db, wid)
    assert (run["name"], run["queue"], run["status"], run["inputs"]) == (
        "reports.build", "reports", "pending", inputs)
    assert claim_one(db, "w", "reports")["id"] == wid  # an ordinary queued run


def test_missed_ticks_are_skipped_by_default(db: Conn) -> None:
    declare_schedule(db, "five", "*/5 * * * *")
    set_now(db, minute(5))
    assert fire(db) == 1
    set_now(db, minute(23))  # 10, 15 and 20 were missed: nothing swept
    assert fire(db) == 0
    assert last_tick(db, "five") == minute(23)
    set_now(db, minute(25) + timedelta(seconds=59))
    assert fire(db) == 1
    assert scheduled_ids(db) == [tick_id("five", minute(5)), tick_id("five", minute(25))]


def test_catch_up_fires_missed_ticks_oldest_first(db: Conn) -> None:
    declare_schedule(db, "five", "*/5 * * * *", catch_up=True)
    set_now(db, minute(23))
    assert fire(db) == 4
    ids = [tick_id("five", minute(m)) for m in (5, 10, 15, 20)]
    assert scheduled_ids(db) == ids
    seqs = [scalar(db, "select seq from pgdurable.ready where workflow_id = %s", (i,))
            for i in ids]
    assert seqs == sorted(seqs)  # enqueued in tick order
    assert last_tick(db, "five") == minute(23)
    set_now(db, minute(25))
    assert fire(db) == 1


def test_catch_up_goes_back_at_most_one_day(db: Conn) -> None:
    declare_schedule(db, "hourly", "0 * * * *", catch_up=True)
    now = T0 + timedelta(days=3, minutes=30)
    set_now(db, now)
    assert fire(db) == 24
    ids = scheduled_ids(db)
    assert ids[0] == tick_id("hourly", T0 + timedelta(days=2, hours=1))
    assert ids[-1] == tick_id("hourly", T0 + timedelta(days=3))


def test_ticks_left_by_the_limit_fire_at_the_next_call(db: Conn) -> None:
    declare_schedule(db, "every", "* * * * *", catch_up=True)
    set_now(db, minute(5))
    assert [fire(db, limit=2) for _ in range(4)] == [2, 2, 1, 0]
    assert scheduled_ids(db) == [tick_id("every", minute(m)) for m in range(1, 6)]
    assert last_tick(db, "every") == minute(5)


def test_the_limit_spans_schedules(db: Conn) -> None:
    for name in ("a", "b", "c"):
        declare_schedule(db, name, "* * * * *")
    set_now(db, minute(1))
    assert [fire(db, limit=2) for _ in range(3)] == [2, 1, 0]
    assert scheduled_ids(db) == [tick_id(n, minute(1)) for n in ("a", "b", "c")]


def test_a_tick_whose_run_exists_already_is_not_duplicated(db: Conn) -> None:
    declare_schedule(db, "s", "* * * * *")
    wid = enqueue(db, id=tick_id("s", minute(1)), inputs={"args": ["manual"], "kwargs": {}})
    set_now(db, minute(1))
    fire(db)
    assert scheduled_ids(db) == [wid]
    assert workflow(db, wid)["inputs"]["args"] == ["manual"]


def test_recover_sweep_fires_schedules(db: Conn) -> None:
    declare_schedule(db, "s", "*/10 * * * *", catch_up=True)
    set_now(db, minute(30))
    assert sweep(db)["scheduled"] == 3
    assert sweep(db)["scheduled"] == 0


def test_a_schedule_that_cannot_fire_does_not_stop_recovery(db: Conn) -> None:
    declare_schedule(db, "broken", "* * * * *")
    declare_schedule(db, "healthy", "* * * * *")
    # What declare_schedule refuses, written behind its back (the tick's enqueue raises PD006).
    db.execute("update pgdurable.schedules set inputs = '[]' where name = 'broken'")
    enqueue(db, id="orphan")
    claim_one(db, "w", lease=5)
    set_now(db, minute(1))
    counts = sweep(db)
    assert (counts["requeued"], counts["scheduled"], counts["schedule_errors"]) == (1, 1, 1)
    assert scheduled_ids(db) == [tick_id("healthy", minute(1))]
    row = db.execute("select last_tick, last_error, last_error_at from pgdurable.schedules "
                     "where name = 'broken'").fetchone()
    assert row is not None
    assert row[0] == minute(1)  # the failed tick is skipped, not retried at every sweep
    assert row[1]["sqlstate"] == "PD006" and "inputs must be a JSON object" in row[1]["message"]
    assert row[2] == minute(1)

    db.execute("""update pgdurable.schedules set inputs = '{"args": [], "kwargs": {}}'""")
    set_now(db, minute(2))
    assert sweep(db)["schedule_errors"] == 0
    assert tick_id("broken", minute(2)) in scheduled_ids(db)
    assert db.execute("select last_error, last_error_at from pgdurable.schedules "
                      "where name = 'broken'").fetchone() == (None, None)


# -- several sweepers -----------------------------------------------------------------------------


def test_a_sweeper_skips_the_schedules_one_in_flight_fires_and_then_finds_none_due(
    db: Conn, interleave: Interleaving
) -> None:
    declare_schedule(db, "s", "* * * * *")
    a, b = interleave.session(minute(1)), interleave.session(minute(1))
    with a.transaction():  # a: begin; fire the minute-1 tick (holding the schedule's row)
        assert fire(a) == 1
        assert fire(b) == 0  # b: does not wait, skips the schedule a holds
    assert fire(b) == 0  # a committed: the tick is done
    assert scheduled_ids(db) == [tick_id("s", minute(1))]
    assert last_tick(db, "s") == minute(1)


def test_a_recover_sweep_waits_for_one_in_flight_and_fires_nothing_twice(
    db: Conn, interleave: Interleaving
) -> None:
    declare_schedule(db, "s", "* * * * *")
    assert sweep(db)["scheduled"] == 0  # the first sweep: its row now exists, to be locked
    a = interleave.session(minute(1))
    with a.transaction():  # a: begin; sweep (holding the sweep row), fires the tick
        assert sweep(a)["scheduled"] == 1
        b = interleave.waits(sweep, now=minute(1))  # b: sweep, waits for a
        assert b.running
    assert b.join()["scheduled"] == 0  # a committed: the tick is not fired again
    assert scheduled_ids(db) == [tick_id("s", minute(1))]


@pytest.mark.parametrize("entry", ["fire_schedules", "recover_sweep"])
@pytest.mark.parametrize("catch_up", [False, True])
def test_two_concurrent_sweepers_fire_each_tick_exactly_once(
    dsn: str, db: Conn, entry: str, catch_up: bool
) -> None:
    """Two sessions step through the same minutes with their own clocks, released together at
    each minute by a barrier: every tick has one run, and the counts add up to the runs."""
    names = ["a", "b", "c"]
    for name in names:
        declare_schedule(db, name, "* * * * *", catch_up=catch_up)
    minutes = 30
    barrier = threading.Barrier(2, timeout=30)
    counts: list[list[int]] = [[], []]
    errors: list[BaseException] = []
    sql = ("select pgdurable.fire_schedules(1000)" if entry == "fire_schedules" else
           "select (pgdurable.recover_sweep(1000, 86400)->>'scheduled')::int")

    def sweeper(k: int) -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                for m in range(1, minutes + 1):
                    set_now(conn, minute(m) + timedelta(seconds=7 * k))
                    barrier.wait()
                    counts[k].append(int(scalar(conn, sql)))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=sweeper, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    expected = sorted(tick_id(n, minute(m)) for n in names for m in range(1, minutes + 1))
    assert scheduled_ids(db) == expected
    assert sum(counts[0]) + sum(counts[1]) == len(expected)  # nobody enqueued a tick twice
    assert [a + b for a, b in zip(*counts, strict=True)] == [len(names)] * minutes
    assert scalar(db, "select count(*) from pgdurable.ready") == len(expected)
    assert {workflow(db, i)["inputs"] == NO_INPUTS for i in expected} == {True}
