"""Fencing seen from Python: a stale execution can neither record steps nor finish the run, and
cancel stops a run at its next checkpoint."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest

import pgdurable
from pgdurable import WorkflowFunction
from tests.support.fixtures import AppFactory
from tests.support.runs import FUTURE, Calls, Gate, lease_expired, run_state
from tests.support.waiting import wait_until

Conn = psycopg.Connection[tuple[object, ...]]


def build_three_steps(
    app: pgdurable.App, calls: Calls, gate_at: dict[tuple[str, int], Gate],
    seen: list[type[BaseException]],
) -> WorkflowFunction[[], str]:
    """Steps one, two, three; the n-th run of a step waits at `gate_at[(step, n)]` if given."""

    def body(label: str) -> str:
        n = calls.hit(label)
        gate = gate_at.get((label, n))
        if gate is not None:
            gate.wait()
        return f"{label}#{n}"

    @app.step()
    def one() -> str:
        return body("one")

    @app.step()
    def two() -> str:
        return body("two")

    @app.step()
    def three() -> str:
        return body("three")

    @app.workflow()
    def flow() -> str:
        try:
            return "/".join([one(), two(), three()])
        except BaseException as exc:
            seen.append(type(exc))
            raise

    return flow


def test_stale_execution_cannot_record_steps_and_stops(
    app: pgdurable.App, make_app: AppFactory, gates: Callable[[], Gate], conn: Conn
) -> None:
    calls, seen = Calls(), list[type[BaseException]]()
    stale_two, new_three = gates(), gates()
    gate_at = {("two", 1): stale_two, ("three", 1): new_three}
    handle = app.start(build_three_steps(app, calls, gate_at, seen), workflow_id="fz1")
    stale_two.wait_entered()

    # Taken over while the first execution is inside step two; the new owner re-runs two and
    # waits inside three, so the run is still `running` (epoch 2) when the stale one wakes up.
    app2 = make_app(clock=FUTURE)
    handle2 = app2.start(build_three_steps(app2, calls, gate_at, seen), workflow_id="fz1")
    new_three.wait_entered()
    assert run_state(conn, "fz1") == ("running", 2)

    stale_two.open()
    wait_until(lambda: seen, what="the stale execution to stop")
    assert seen == [pgdurable.FencedError]
    assert calls.counts == {"one": 1, "two": 2, "three": 1}  # the stale one never got to three
    assert run_state(conn, "fz1") == ("running", 2)
    assert [(s.name.rsplit(".", 1)[-1], s.output, s.attempt) for s in app.list_steps("fz1")] \
        == [("one", "one#1", 1), ("two", "two#2", 2)]

    new_three.open()
    assert handle2.result(timeout=10) == "one#1/two#2/three#1"
    assert handle.result(timeout=10) == "one#1/two#2/three#1"  # one run, whichever handle
    assert seen == [pgdurable.FencedError]
    assert run_state(conn, "fz1") == ("succeeded", 2)


def build_slow_finisher(
    app: pgdurable.App, calls: Calls, gates_by_execution: dict[int, Gate]
) -> WorkflowFunction[[], str]:
    @app.step()
    def work() -> str:
        calls.hit("work")
        return "worked"

    @app.workflow()
    def flow() -> str:
        value = work()
        execution = calls.hit("flow-tail")
        gates_by_execution[execution].wait()  # plain workflow code, after the last step
        return f"{value} by execution {execution}"

    return flow


def test_stale_execution_cannot_finish_the_run(
    app: pgdurable.App, make_app: AppFactory, gates: Callable[[], Gate], conn: Conn
) -> None:
    calls = Calls()
    by_execution = {1: gates(), 2: gates()}
    app.start(build_slow_finisher(app, calls, by_execution), workflow_id="fz2")
    by_execution[1].wait_entered()
    app2 = make_app(clock=FUTURE)
    handle2 = app2.start(build_slow_finisher(app2, calls, by_execution), workflow_id="fz2")
    by_execution[2].wait_entered()

    by_execution[1].open()  # the zombie returns and tries to complete the run
    wait_until(lambda: app.executor.local("fz2") is None, what="the stale execution to end")
    info = app.get_workflow("fz2")
    assert (info.status, info.attempt, info.output) == ("running", 2, None)

    by_execution[2].open()
    assert handle2.result(timeout=10) == "worked by execution 2"
    assert calls["work"] == 1


def test_cancel_stops_a_running_workflow_at_its_next_checkpoint(
    app: pgdurable.App, gates: Callable[[], Gate], conn: Conn
) -> None:
    calls, seen, gate = Calls(), list[type[BaseException]](), gates()
    handle = app.start(build_three_steps(app, calls, {("one", 1): gate}, seen), workflow_id="c1")
    gate.wait_entered()
    assert app.cancel("c1") == "cancelled"
    assert handle.status() == "cancelled"
    gate.open()
    wait_until(lambda: seen, what="the execution to notice the cancellation")
    assert seen == [pgdurable.FencedError]
    with pytest.raises(pgdurable.WorkflowCancelled):
        handle.result(timeout=5)
    assert calls.counts == {"one": 1}  # stopped at the checkpoint of step one
    assert app.list_steps("c1") == []
    assert app.cancel("c1") == "cancelled"  # idempotent


def test_cancel_leaves_finished_runs_alone_and_refuses_unknown_ids(
    app: pgdurable.App, conn: Conn
) -> None:
    @app.workflow()
    def quick() -> int:
        return 7

    assert app.start(quick, workflow_id="done").result(timeout=10) == 7
    assert app.cancel("done") == "succeeded"
    assert app.retrieve("done").result(timeout=1) == 7
    with pytest.raises(pgdurable.WorkflowNotFound):
        app.cancel("nope")


def test_resume_continues_a_cancelled_run_from_its_checkpoints(
    app: pgdurable.App, gates: Callable[[], Gate], conn: Conn
) -> None:
    calls, seen, gate = Calls(), list[type[BaseException]](), gates()
    app.start(build_three_steps(app, calls, {("two", 1): gate}, seen), workflow_id="c2")
    gate.wait_entered()
    app.cancel("c2")
    gate.open()
    wait_until(lambda: app.executor.local("c2") is None, what="the execution to stop")
    assert run_state(conn, "c2") == ("cancelled", 1)

    assert app.resume("c2").result(timeout=10) == "one#1/two#2/three#1"
    assert calls.counts == {"one": 1, "two": 2, "three": 1}
    assert run_state(conn, "c2") == ("succeeded", 2)


def test_a_run_whose_execution_died_in_a_live_process_can_be_taken_over(
    make_app: AppFactory, conn: Conn
) -> None:
    app1 = make_app(lease_seconds=0.5, heartbeat_seconds=0.1)

    @app1.step()
    def quit_thread() -> None:
        raise SystemExit(3)  # e.g. a library calls sys.exit(): ends the thread, not the process

    @app1.workflow()
    def flow() -> None:
        quit_thread()

    app1.start(flow, workflow_id="orphan")
    wait_until(lambda: app1.executor.local("orphan") is None, what="the execution to end")
    assert run_state(conn, "orphan") == ("running", 1)
    # The process (app1) lives on; the dead execution's lease must still run out.
    wait_until(lambda: lease_expired(conn, "orphan"), timeout=3,
               what="the lease of the dead execution to expire")
