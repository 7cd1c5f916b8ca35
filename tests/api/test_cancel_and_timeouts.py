"""Cancel of a run tree and timeouts through the App (issue 9 items 4, 5 and 7): cascade,
waiters woken at once, no step body after a cancel, the whole-run timeout of a suspended and
of a running run, step timeouts with retries, `app.start` of a pending queued run, and bad
input. The sweep runs with a session clock moved past the timeouts (no sleeping for them)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
import pytest

import pgdurable
from pgdurable.runtime import sleeping
from tests.support.runs import Calls, Gate, workflow_count
from tests.support.sql import call, scalar, set_now, sweep, workflow
from tests.support.waiting import wait_until

Conn = psycopg.Connection[tuple[object, ...]]


def later(conn: Conn, hours: float = 1.0) -> None:
    """This session's clock, `hours` from the database's real now."""
    now = scalar(conn, "select now()")
    set_now(conn, now + timedelta(hours=hours))


def test_app_cancel_cascades_over_a_three_level_tree(app: pgdurable.App, conn: Conn) -> None:
    jobs = app.queue("jobs")

    @app.workflow(name="tree.node")
    def node() -> None:
        return None

    ids = {n: jobs.enqueue(node, workflow_id=n).workflow_id
           for n in ("root", "mid", "leaf", "side")}
    for child, parent in (("mid", "root"), ("leaf", "mid"), ("side", "root")):
        conn.execute("update pgdurable.workflows set parent_id = %s where id = %s",
                     (parent, child))
    assert app.cancel("mid", cascade=False) == "cancelled"
    assert app.get_workflow("leaf").status == "pending"
    assert app.cancel(ids["root"]) == "cancelled"
    assert {n: app.get_workflow(n).status for n in ids} == dict.fromkeys(ids, "cancelled")
    assert app.admin.cancel("root", cascade=True) == "cancelled"  # again: nothing changes
    with pytest.raises(pgdurable.WorkflowNotFound):
        app.cancel("nope")
    with pytest.raises(pgdurable.InvalidArgument):
        app.cancel("root", cascade="yes")  # type: ignore[arg-type]


def test_a_waiter_wakes_at_once_and_the_next_step_never_runs(
    app: pgdurable.App, conn: Conn, gates: Callable[[], Gate]
) -> None:
    gate, calls = gates(), Calls()

    @app.step(name="cw.long")
    def long_step() -> int:
        calls.hit("long")
        gate.wait()
        return 1

    @app.step(name="cw.next")
    def next_step() -> int:
        calls.hit("next")
        return 2

    @app.workflow(name="cw.flow")
    def flow() -> int:
        return long_step() + next_step()

    handle = app.start(flow)
    gate.wait_entered()
    outcome: dict[str, Any] = {}

    def wait() -> None:
        try:
            handle.result(timeout=30)
        except BaseException as exc:
            outcome["exc"], outcome["at"] = exc, time.monotonic()

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.3)  # the waiter is waiting on the local execution
    cancelled_at = time.monotonic()
    assert scalar(conn, "select pgdurable.cancel(%s)", (handle.workflow_id,)) == "cancelled"
    waiter.join(10)
    assert isinstance(outcome["exc"], pgdurable.WorkflowCancelled)
    assert outcome["at"] - cancelled_at < 1.0  # ~0.2 s: one local poll
    local = app.executor.local(handle.workflow_id)
    gate.open()  # the step in flight runs to its end; its checkpoint is refused
    if local is not None:
        local.result(10)
    assert calls["long"] == 1 and calls["next"] == 0
    assert call(conn, "select count(*) as n from pgdurable.steps where workflow_id = %s",
                (handle.workflow_id,))[0]["n"] == 0
    assert handle.status() == "cancelled"


def test_a_cancelled_in_process_sleep_stops_at_once(app: pgdurable.App, conn: Conn) -> None:
    calls = Calls()

    @app.step(name="cs.after")
    def after() -> None:
        calls.hit("after")

    @app.workflow(name="cs.flow")
    def flow() -> None:
        pgdurable.sleep(60)
        after()

    handle = app.start(flow)
    wait_until(lambda: call(conn, "select count(*) as n from pgdurable.steps "
                                  "where workflow_id = %s", (handle.workflow_id,))[0]["n"],
               what="the sleep to be recorded")
    app.cancel(handle.workflow_id)  # this process's executor learns it at once
    local = app.executor.local(handle.workflow_id)
    if local is not None:
        assert local.result(5) is None
    with pytest.raises(pgdurable.WorkflowCancelled):
        handle.result(timeout=5)
    assert calls["after"] == 0


def test_a_timeout_cancels_a_suspended_run_with_its_subtree(
    app: pgdurable.App, conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sleeping, "SUSPEND_AFTER_SECONDS", 0.1)
    naps = app.queue("naps")

    @app.workflow(name="to.nap", timeout=120)
    def nap() -> str:
        pgdurable.sleep(3600)
        return "rested"

    handle = naps.enqueue(nap)
    kid = naps.enqueue(nap, workflow_id="to.kid", delay=3600, timeout=7200)
    conn.execute("update pgdurable.workflows set parent_id = %s where id = 'to.kid'",
                 (handle.workflow_id,))
    worker = pgdurable.Worker(app, queues=["naps"], concurrency=1, poll_interval=0.05)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: handle.info().waiting_for == "sleep", what="the run to suspend")
        row = workflow(conn, handle.workflow_id)
        assert row["timeout_at"] - row["created_at"] == timedelta(seconds=120)
        kid_row = workflow(conn, "to.kid")
        assert kid_row["timeout_at"] - kid_row["created_at"] == timedelta(seconds=7200)
        later(conn, hours=1)
        assert sweep(conn)["timed_out"] == 1
    finally:
        worker.stop()
        thread.join(15)
    with pytest.raises(pgdurable.WorkflowTimeout) as info:
        handle.result(timeout=5)
    assert info.value.error["type"] == "WorkflowTimeout"
    with pytest.raises(pgdurable.WorkflowCancelled):
        kid.result(timeout=5)
    assert kid.info().error is not None and kid.info().error["ancestor"] == handle.workflow_id


def test_a_timeout_cancels_a_running_run_and_refuses_its_step(
    app: pgdurable.App, conn: Conn, gates: Callable[[], Gate]
) -> None:
    gate, calls = gates(), Calls()

    @app.step(name="tr.slow")
    def slow() -> int:
        calls.hit("slow")
        gate.wait()
        return 1

    @app.step(name="tr.next")
    def nxt() -> int:
        calls.hit("next")
        return 1

    @app.workflow(name="tr.flow", timeout=3600)
    def flow() -> int:
        return slow() + nxt()

    handle = app.start(flow, timeout=60)  # the call's timeout wins over the decorator's
    gate.wait_entered()
    row = workflow(conn, handle.workflow_id)
    assert row["timeout_at"] - row["created_at"] == timedelta(seconds=60)
    later(conn, hours=0.5)
    assert sweep(conn)["timed_out"] == 1
    started = time.monotonic()
    with pytest.raises(pgdurable.WorkflowTimeout):
        handle.result(timeout=10)
    assert time.monotonic() - started < 1.0
    gate.open()
    wait_until(lambda: app.executor.local(handle.workflow_id) is None, what="the execution end")
    assert calls["slow"] == 1 and calls["next"] == 0


def test_a_step_timeout_fails_the_attempt_and_retries(app: pgdurable.App) -> None:
    calls = Calls()
    release = threading.Event()

    @app.step(name="st.flaky", timeout=0.2, retries=1, interval=0.01)
    def flaky() -> str:
        if calls.hit("flaky") == 1:
            release.wait(10)  # the first attempt overruns; it is abandoned
            calls.hit("abandoned-finished")
            return "late"
        return "on time"

    @app.step(name="st.stuck", timeout=0.1, retries=1, interval=0.01)
    def stuck() -> str:
        calls.hit("stuck")
        release.wait(10)
        return "never seen"

    @app.workflow(name="st.ok")
    def ok() -> str:
        return flaky()

    @app.workflow(name="st.bad")
    def bad() -> str:
        return stuck()

    assert app.start(ok).result(timeout=10) == "on time"
    assert calls["flaky"] == 2
    with pytest.raises(pgdurable.WorkflowFailed) as info:
        app.start(bad).result(timeout=10)
    assert info.value.type_name == "pgdurable.errors.StepTimeout"
    assert calls["stuck"] == 2
    release.set()
    wait_until(lambda: calls["abandoned-finished"] == 1, what="the abandoned body to end")


def test_start_of_a_pending_queued_run_leaves_it_to_its_queue(app: pgdurable.App) -> None:
    later_q = app.queue("later")
    calls = Calls()

    @app.workflow(name="pq.flow")
    def flow() -> str:
        calls.hit("flow")
        return "ran"

    later_q.enqueue(flow, workflow_id="pq-1", delay=3600)
    handle = app.start(flow, workflow_id="pq-1")
    assert app.executor.local("pq-1") is None
    assert handle.status() == "pending"
    with pytest.raises(TimeoutError):
        handle.result(timeout=0.3)
    assert calls["flow"] == 0


BAD_TIMEOUTS = [0, -1, 0.0, math.nan, math.inf, -math.inf, True, False, "5", timedelta(0)]


@pytest.mark.parametrize("bad", BAD_TIMEOUTS, ids=repr)
def test_bad_timeouts_are_refused_at_the_call_and_write_nothing(
    app: pgdurable.App, conn: Conn, bad: Any
) -> None:
    queue = app.queue("bad")

    @app.workflow(name="bt.flow")
    def flow() -> None:
        return None

    with pytest.raises(pgdurable.InvalidArgument, match="timeout"):
        app.workflow(name="bt.other", timeout=bad)
    with pytest.raises(pgdurable.InvalidArgument, match="timeout"):
        app.step(name="bt.step", timeout=bad)
    with pytest.raises(pgdurable.InvalidArgument, match="timeout"):
        app.start(flow, timeout=bad)
    with pytest.raises(pgdurable.InvalidArgument, match="timeout"):
        queue.enqueue(flow, timeout=bad)
    with pytest.raises(pgdurable.InvalidArgument, match="timeout"):
        queue.enqueue_many(flow, [()], timeout=bad)
    assert workflow_count(conn) == 0
