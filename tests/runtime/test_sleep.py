"""`pgdurable.sleep`: durable in a direct run (the wake-up time is recorded, a takeover sleeps
only what is left), suspending in a worker (the run holds no slot while it sleeps)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.types.json import Jsonb

import pgdurable
from pgdurable import Worker
from pgdurable.cli import main as cli_main
from pgdurable.errors import InvalidArgument
from pgdurable.runtime import sleeping
from tests.support.sql import NO_INPUTS, call, workflow
from tests.support.waiting import wait_until

Conn = psycopg.Connection[Any]


def step_names(conn: Conn, wid: str) -> list[str]:
    rows = call(conn, "select name from pgdurable.steps where workflow_id = %s order by step_no",
                (wid,))
    return [r["name"] for r in rows]


def test_a_direct_run_sleeps_and_records_its_wake_up_time(app: pgdurable.App, conn: Conn
                                                         ) -> None:
    @app.step(name="before")
    def before() -> int:
        return 1

    @app.workflow(name="napper")
    def napper() -> int:
        value = before()
        pgdurable.sleep(timedelta(seconds=0.3))
        return value + 1

    started = time.monotonic()
    assert app.start(napper, workflow_id="nap").result(timeout=30) == 2
    assert time.monotonic() - started >= 0.3
    assert step_names(conn, "nap") == ["before", "pgdurable.sleep"]


def test_a_takeover_sleeps_only_what_is_left(app: pgdurable.App, conn: Conn) -> None:
    calls: list[str] = []

    @app.step(name="after")
    def after() -> str:
        calls.append("after")
        return "done"

    @app.workflow(name="late")
    def late() -> str:
        pgdurable.sleep(2.0)
        return after()

    # A worker that died while sleeping: it recorded the sleep 1.5 s ago, its lease expired.
    conn.execute("select pgdurable.enqueue('default', 'late', %s, 'late-1')", (Jsonb(NO_INPUTS),))
    epoch = call(conn, "select epoch from pgdurable.claim('ghost', array['default'], 1, 0.001)"
                 )[0]["epoch"]
    call(conn, "select * from pgdurable.sleep_step('late-1', %s, 0, 2.0)", (epoch,))
    time.sleep(1.5)
    started = time.monotonic()
    assert app.retrieve("late-1").result(timeout=30) == "done"  # the waiting handle takes over
    waited = time.monotonic() - started
    assert waited < 1.4, f"slept {waited:.2f}s: the whole sleep again, not what was left"
    assert calls == ["after"]
    assert workflow(conn, "late-1")["attempt"] == epoch + 1


def test_a_workers_long_sleep_suspends_the_run_and_frees_its_slot(
    app: pgdurable.App, conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sleeping, "SUSPEND_AFTER_SECONDS", 0.2)
    naps = app.queue("naps")
    calls: list[str] = []

    @app.step(name="nap.before")
    def before() -> None:
        calls.append("before")

    @app.workflow(name="nap")
    def nap() -> str:
        before()
        try:
            pgdurable.sleep(1.5)
        except Exception:  # a workflow's own handler does not swallow the suspension
            calls.append("swallowed")
            raise
        return "rested"

    @app.workflow(name="quick")
    def quick() -> str:
        calls.append("quick")
        return "quick"

    napping = naps.enqueue(nap)
    worker = Worker(app, queues=["naps"], concurrency=1, poll_interval=0.05)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: "pgdurable.sleep" in step_names(conn, napping.workflow_id),
                   what="the run to start sleeping")
        wait_until(lambda: napping.status() == "pending", what="the run to be suspended")
        row = workflow(conn, napping.workflow_id)
        assert (row["owner"], row["lease_until"]) == (None, None)
        wake_at = call(conn, "select (output->>'wake_at')::timestamptz as t from pgdurable.steps "
                             "where workflow_id = %s and step_no = 1", (napping.workflow_id,))
        assert napping.info().available_at == wake_at[0]["t"]
        assert napping.info().waiting_for == "sleep"  # the documented sub-state of pending
        shown = CliRunner().invoke(cli_main, ["workflows", "show", "--dsn", app.db.dsn,
                                              napping.workflow_id])
        assert f"waiting:  sleep (until {wake_at[0]['t']})" in shown.output, shown.output
        # The only slot is free while it sleeps: another run goes first.
        assert naps.enqueue(quick).result(timeout=10) == "quick"
        assert napping.status() == "pending"
        assert napping.result(timeout=30) == "rested"
    finally:
        worker.stop()
        thread.join(15)
    assert calls == ["before", "quick"]
    assert workflow(conn, napping.workflow_id)["attempt"] == 2  # suspended once, claimed again
    assert napping.info().waiting_for is None
    assert step_names(conn, napping.workflow_id) == ["nap.before", "pgdurable.sleep"]


def test_outside_a_workflow_it_is_a_plain_sleep() -> None:
    started = time.monotonic()
    pgdurable.sleep(0.05)
    assert time.monotonic() - started >= 0.05


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "1", True, None])
def test_a_bad_duration_is_refused_at_the_call(bad: Any) -> None:
    with pytest.raises(InvalidArgument, match="sleep needs"):
        pgdurable.sleep(bad)
