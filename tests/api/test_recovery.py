"""The Python side of recovery: `app.schedule` / `@app.scheduled`, their bad input, a scheduled
run executed by a worker, dead letters seen through a handle, and `RecoverySettings`."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import psycopg
import pytest

import pgdurable
from pgdurable import Worker
from pgdurable.errors import (
    InvalidArgument,
    RegistrationError,
    SerializationError,
    UnknownQueue,
    WorkflowFailed,
)
from pgdurable.runtime.recovery import DEFAULT_RETENTION_SECONDS, RecoverySettings, sweep
from tests.support.sql import call, claim_one, declare, enqueue, scalar, scheduled_ids, set_now

Conn = psycopg.Connection[Any]


def schedules(conn: Conn) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in call(conn, "select * from pgdurable.schedules")}


# -- declaring ------------------------------------------------------------------------------------


def test_schedules_are_stored_when_the_app_connects(app: pgdurable.App, conn: Conn) -> None:
    reports = app.queue("reports")

    @app.workflow(name="build_report")
    def build_report(customer: str, month: int = 1) -> str:
        return f"{customer}-{month}"

    schedule = app.schedule("acme-monthly", "0 6 1 * *", build_report, "acme", month=3,
                            queue=reports.name, timezone="Europe/Paris", catch_up=True)
    assert schedule.name == "acme-monthly"
    assert schedules(conn) == {}  # nothing connects before first use
    app.db  # noqa: B018
    row = schedules(conn)["acme-monthly"]
    assert (row["cron"], row["workflow_name"], row["queue"], row["timezone"], row["catch_up"]) \
        == ("0 6 1 * *", "build_report", "reports", "Europe/Paris", True)
    assert row["inputs"] == {"args": ["acme", 3], "kwargs": {}}
    assert (row["minutes"], row["hours"], row["days"]) == ([0], [6], [1])


def test_a_schedule_declared_after_connecting_is_stored_at_once(
    app: pgdurable.App, conn: Conn
) -> None:
    @app.workflow()
    def ping() -> str:
        return "pong"

    app.db  # noqa: B018
    app.schedule("pinger", "@hourly", ping)
    row = schedules(conn)["pinger"]
    assert (row["cron"], row["queue"], row["timezone"], row["catch_up"]) == (
        "@hourly", "default", "UTC", False)
    assert (row["minutes"], row["hours"]) == ([0], list(range(24)))


def test_the_scheduled_decorator_goes_above_workflow(app: pgdurable.App, conn: Conn) -> None:
    @app.scheduled("*/15 * * * *", timezone="Asia/Tokyo")
    @app.workflow(name="cleanup")
    def cleanup() -> int:
        return 7

    @app.scheduled("0 0 * * sun", name="weekly-digest")
    @app.workflow()
    def digest() -> int:
        return 1

    assert isinstance(cleanup, pgdurable.WorkflowFunction)
    assert set(app.registry.schedules) == {"cleanup", "weekly-digest"}
    app.db  # noqa: B018
    stored = schedules(conn)
    assert stored["cleanup"]["minutes"] == [0, 15, 30, 45]
    assert stored["cleanup"]["timezone"] == "Asia/Tokyo"
    assert stored["weekly-digest"]["weekdays"] == [0]
    assert cleanup() == 7  # still an ordinary workflow


# -- bad input ------------------------------------------------------------------------------------


@pytest.fixture
def flow(app: pgdurable.App) -> pgdurable.WorkflowFunction[[int], int]:
    @app.workflow(name="flow")
    def flow(n: int) -> int:
        return n + 1

    return flow


@pytest.mark.parametrize("expression", ["* * * *", "61 * * * *", "every minute", ""])
def test_an_invalid_cron_expression_fails_at_declaration(
    app: pgdurable.App, flow: pgdurable.WorkflowFunction[[int], int], expression: str
) -> None:
    with pytest.raises(InvalidArgument, match="cron expression"):
        app.schedule("s", expression, flow, 1)
    with pytest.raises(InvalidArgument, match="cron expression"):
        app.scheduled(expression)
    assert app.registry.schedules == {}


def test_a_schedule_needs_a_registered_workflow(
    app: pgdurable.App, flow: pgdurable.WorkflowFunction[[int], int]
) -> None:
    def plain(n: int) -> int:
        return n

    @app.step()
    def a_step(n: int) -> int:
        return n

    other = pgdurable.App("postgresql://unused")

    @other.workflow(name="elsewhere")
    def elsewhere(n: int) -> int:
        return n

    with pytest.raises(RegistrationError, match="not a workflow registered"):
        app.schedule("s", "* * * * *", plain, 1)  # type: ignore[arg-type]
    with pytest.raises(RegistrationError, match="not a workflow registered"):
        app.schedule("s", "* * * * *", a_step, 1)  # type: ignore[arg-type]
    with pytest.raises(RegistrationError, match="no workflow named 'nope'"):
        app.schedule("s", "* * * * *", "nope", 1)
    with pytest.raises(RegistrationError, match="belongs to another App"):
        app.schedule("s", "* * * * *", elsewhere, 1)
    with pytest.raises(RegistrationError, match=r"above @app\.workflow"):
        app.scheduled("* * * * *")(plain)  # type: ignore[arg-type]
    assert app.registry.schedules == {}
    app.schedule("s", "* * * * *", "flow", 1)  # by name
    assert app.registry.schedules["s"].workflow is flow


def test_other_bad_schedule_arguments(
    app: pgdurable.App, flow: pgdurable.WorkflowFunction[[int], int]
) -> None:
    with pytest.raises(InvalidArgument, match="time zone"):
        app.schedule("s", "* * * * *", flow, 1, timezone="Nowhere/Special")
    with pytest.raises(InvalidArgument, match="non-empty name"):
        app.schedule("", "* * * * *", flow, 1)
    with pytest.raises(SerializationError, match="bad arguments"):
        app.schedule("s", "* * * * *", flow)  # n is missing
    with pytest.raises(SerializationError):
        app.schedule("s", "* * * * *", flow, "not a number")
    app.schedule("s", "* * * * *", flow, 1)
    with pytest.raises(RegistrationError, match="already declared"):
        app.schedule("s", "*/2 * * * *", flow, 2)


def test_a_schedule_on_an_undeclared_queue_fails_when_the_app_connects(
    app: pgdurable.App, flow: pgdurable.WorkflowFunction[[int], int]
) -> None:
    app.schedule("s", "* * * * *", flow, 1, queue="nope")
    with pytest.raises(UnknownQueue, match="nope"):
        app.db  # noqa: B018


def test_a_schedule_that_failed_to_store_is_not_kept(
    app: pgdurable.App, flow: pgdurable.WorkflowFunction[[int], int], conn: Conn
) -> None:
    app.db  # noqa: B018
    with pytest.raises(UnknownQueue):
        app.schedule("s", "* * * * *", flow, 1, queue="nope")
    assert "s" not in app.registry.schedules
    app.schedule("s", "* * * * *", flow, 1)  # fixed: declared again
    assert set(schedules(conn)) == {"s"}


# -- running scheduled work -----------------------------------------------------------------------


def test_ticks_fire_and_a_worker_runs_them(app: pgdurable.App, conn: Conn) -> None:
    """On the wall clock: the schedule is moved three minutes back, so one sweep catches up on
    the missed ticks (at least three), and a worker runs them with the stored arguments."""
    seen: list[str] = []

    @app.workflow(name="tick")
    def tick(label: str) -> str:
        seen.append(str(pgdurable.workflow_id()))
        return label.upper()

    app.schedule("ticker", "* * * * *", tick, "hello", catch_up=True)
    app.db  # noqa: B018
    conn.execute("update pgdurable.schedules set last_tick = last_tick - interval '3 minutes'")
    counts = sweep(conn, RecoverySettings())
    assert counts["scheduled"] >= 3
    ids = scheduled_ids(conn, "ticker")
    assert len(ids) == counts["scheduled"]

    Worker(app, concurrency=2, poll_interval=0.05, exit_when_idle=True).run()
    assert sorted(seen) == ids
    assert {app.retrieve(i).result(timeout=5) for i in ids} == {"HELLO"}


def test_a_dead_letter_fails_its_handle_with_recovery_limit_exceeded(
    app: pgdurable.App, conn: Conn
) -> None:
    @app.workflow(name="flow")
    def flow() -> int:
        return 1

    declare(conn, "fragile", max_recoveries=1)
    app.queue("fragile")
    wid = enqueue(conn, "fragile", "flow", id="doomed")
    set_now(conn, None)
    claim_one(conn, "dead-worker", "fragile", lease=0.01)
    conn.execute("select pg_sleep(0.05)")
    counts = sweep(conn, RecoverySettings())
    assert counts["dead_lettered"] == 1
    with pytest.raises(WorkflowFailed) as info:
        app.retrieve(wid).result(timeout=5)
    assert info.value.type_name == "RecoveryLimitExceeded"
    assert "lost its worker 1 times" in info.value.message
    assert scalar(conn, "select recoveries from pgdurable.workflows where id = %s", (wid,)) == 1


# -- settings -------------------------------------------------------------------------------------


def test_recovery_settings_defaults() -> None:
    settings = RecoverySettings()
    assert (settings.interval, settings.limit) == (1.0, 1000)
    assert settings.retention_seconds == DEFAULT_RETENTION_SECONDS == timedelta(
        days=7).total_seconds()


@pytest.mark.parametrize("kwargs", [
    {"interval": 0.0}, {"interval": -1.0}, {"interval": math.nan}, {"interval": math.inf},
    {"limit": 0}, {"limit": -3}, {"limit": True}, {"limit": 2.5},
    {"retention_seconds": 0.0}, {"retention_seconds": -86400.0},
    {"retention_seconds": math.inf}, {"retention_seconds": math.nan},
])
def test_recovery_settings_refuse_bad_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        RecoverySettings(**kwargs)


# -- recovery budget ------------------------------------------------------------------------------


def test_a_queue_declares_its_recovery_budget(app: pgdurable.App, conn: Conn) -> None:
    app.queue("fragile", max_recoveries=2)
    app.queue("plain")
    app.db  # noqa: B018
    app.queue("late", max_recoveries=5)  # declared after connecting: stored at once
    budgets = dict(conn.execute("select name, max_recoveries from pgdurable.queues").fetchall())
    assert (budgets["fragile"], budgets["plain"], budgets["late"]) == (2, 10, 5)

    conn.execute("select pgdurable.declare_queue_recoveries('plain', 4)")
    other = pgdurable.App(app.db.dsn)
    try:
        other.queue("plain")  # no budget given: the stored one stays
        other.db  # noqa: B018
    finally:
        other.close()
    assert scalar(conn, "select max_recoveries from pgdurable.queues where name = 'plain'") == 4


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "3"])
def test_a_bad_recovery_budget_is_refused_at_declaration(app: pgdurable.App, bad: Any) -> None:
    with pytest.raises(InvalidArgument, match="max_recoveries"):
        app.queue("fragile", max_recoveries=bad)
    assert "fragile" not in app.registry.queues
