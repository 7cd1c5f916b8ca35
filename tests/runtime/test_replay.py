"""Durable continuation: a run whose execution stopped mid-way continues from its checkpoints.

A crash is simulated in-process: a step raises `Crash` (a BaseException), which leaves the run
`running` under its lease exactly as a dead process would. The first App is then closed (its
heartbeat stops), the short lease expires, and a second App takes the run over.
"""

from __future__ import annotations

import psycopg
import pytest

import pgdurable
from pgdurable import WorkflowFunction
from tests.support.fixtures import AppFactory
from tests.support.runs import Calls, Crash, lease_expired, run_state, wait_lease_expired

Conn = psycopg.Connection[tuple[object, ...]]


def build_pipeline(
    app: pgdurable.App, calls: Calls, crash_on_first: frozenset[str] = frozenset()
) -> WorkflowFunction[[int], str]:
    """A three-step workflow; each step named in `crash_on_first` crashes on its first run."""

    def maybe_crash(label: str) -> None:
        if calls.hit(label) == 1 and label in crash_on_first:
            raise Crash(label)

    @app.step()
    def add(x: int, y: int) -> int:
        maybe_crash("add")
        return x + y

    @app.step()
    def mul(x: int, y: int) -> int:
        maybe_crash("mul")
        return x * y

    @app.step()
    def fmt(value: int) -> str:
        maybe_crash("fmt")
        return f"value={value}"

    @app.workflow()
    def pipeline(x: int) -> str:
        return fmt(mul(add(x, 1), 10))

    return pipeline


def crash(app1: pgdurable.App, conn: Conn, workflow_id: str) -> None:
    """Wait for the crashed execution to end, stop the heartbeat, let the lease expire."""
    app1.close()
    assert run_state(conn, workflow_id) == ("running", 1)
    wait_lease_expired(conn, workflow_id)


def test_resume_continues_from_checkpoints_without_rerunning_steps(
    make_app: AppFactory, conn: Conn
) -> None:
    calls = Calls()
    app1 = make_app(lease_seconds=0.5, heartbeat_seconds=0.1)
    flow1 = build_pipeline(app1, calls, frozenset({"mul"}))
    app1.start(flow1, 4, workflow_id="r1")
    crash(app1, conn, "r1")
    assert [(s.step_no, s.name.rsplit(".", 1)[-1], s.status) for s in
            make_app().list_steps("r1")] == [(0, "add", "done")]

    app2 = make_app()
    build_pipeline(app2, calls)
    assert app2.resume("r1").result(timeout=10) == "value=50"

    assert calls.log == ["add", "mul", "mul", "fmt"]  # add ran once: replayed from its record
    assert run_state(conn, "r1") == ("succeeded", 2)
    steps = app2.list_steps("r1")
    assert [s.step_no for s in steps] == [0, 1, 2]
    assert [s.name.rsplit(".", 1)[-1] for s in steps] == ["add", "mul", "fmt"]
    assert [s.attempt for s in steps] == [1, 2, 2]  # the epoch that recorded each step
    assert [s.output for s in steps] == [5, 50, "value=50"]


def test_start_with_same_id_takes_over_an_expired_run(make_app: AppFactory, conn: Conn) -> None:
    calls = Calls()
    app1 = make_app(lease_seconds=0.5, heartbeat_seconds=0.1)
    app1.start(build_pipeline(app1, calls, frozenset({"fmt"})), 1, workflow_id="r2")
    crash(app1, conn, "r2")

    app2 = make_app()
    flow2 = build_pipeline(app2, calls)
    assert app2.start(flow2, 1, workflow_id="r2").result(timeout=10) == "value=20"
    assert calls.log == ["add", "mul", "fmt", "fmt"]
    assert run_state(conn, "r2") == ("succeeded", 2)
    # Finished: yet another start replays nothing and re-runs nothing.
    assert app2.start(flow2, 1, workflow_id="r2").result(timeout=10) == "value=20"
    assert calls.log == ["add", "mul", "fmt", "fmt"]


def test_a_live_lease_is_left_to_its_owner(make_app: AppFactory, conn: Conn) -> None:
    calls = Calls()
    app1 = make_app(lease_seconds=30)
    app1.start(build_pipeline(app1, calls, frozenset({"mul"})), 1, workflow_id="r3")
    app1.close()  # the crashed run keeps its 30 s lease
    app2 = make_app()
    build_pipeline(app2, calls)
    handle = app2.resume("r3")
    assert handle.status() == "running"
    assert not lease_expired(conn, "r3")
    with pytest.raises(TimeoutError):
        handle.result(timeout=0.3)
    assert calls.log == ["add", "mul"]
    assert run_state(conn, "r3") == ("running", 1)


def test_each_takeover_bumps_the_epoch(make_app: AppFactory, conn: Conn) -> None:
    calls = Calls()
    app1 = make_app(lease_seconds=0.5, heartbeat_seconds=0.1)
    app1.start(build_pipeline(app1, calls, frozenset({"add"})), 2, workflow_id="r4")
    crash(app1, conn, "r4")
    app2 = make_app(lease_seconds=0.5, heartbeat_seconds=0.1)
    build_pipeline(app2, calls, frozenset({"mul"}))
    app2.resume("r4")
    app2.close()
    assert run_state(conn, "r4") == ("running", 2)
    wait_lease_expired(conn, "r4")
    app3 = make_app()
    build_pipeline(app3, calls)
    assert app3.resume("r4").result(timeout=10) == "value=30"
    assert run_state(conn, "r4") == ("succeeded", 3)
    assert calls.log == ["add", "add", "mul", "mul", "fmt"]
    assert [s.attempt for s in app3.list_steps("r4")] == [2, 3, 3]


def test_steps_are_numbered_by_call_order_and_replayed_in_a_loop(
    make_app: AppFactory, conn: Conn
) -> None:
    calls = Calls()

    def build(app: pgdurable.App, crash_at: int | None) -> WorkflowFunction[[int], list[int]]:
        @app.step()
        def square(i: int) -> int:
            n = calls.hit(f"square({i})")
            if i == crash_at and n == 1:
                raise Crash()
            return i * i

        @app.step()
        def inner(i: int) -> int:  # called from inside another step: a plain call
            calls.hit(f"inner({i})")
            return i

        @app.step()
        def outer(i: int) -> int:
            return inner(i) + 1

        @app.workflow()
        def loop(n: int) -> list[int]:
            return [square(i) for i in range(n)] + [outer(7)]

        return loop

    app1 = make_app(lease_seconds=0.5, heartbeat_seconds=0.1)
    app1.start(build(app1, crash_at=3), 5, workflow_id="loop")
    crash(app1, conn, "loop")
    app2 = make_app()
    build(app2, crash_at=None)
    assert app2.resume("loop").result(timeout=10) == [0, 1, 4, 9, 16, 8]
    for i in range(5):
        assert calls[f"square({i})"] == (2 if i == 3 else 1)
    assert calls["inner(7)"] == 1
    steps = app2.list_steps("loop")
    assert [s.step_no for s in steps] == list(range(6))
    assert [s.name.rsplit(".", 1)[-1] for s in steps] == ["square"] * 5 + ["outer"]
    assert [s.output for s in steps] == [0, 1, 4, 9, 16, 8]


def test_a_recorded_step_failure_replays_without_rerunning(
    make_app: AppFactory, conn: Conn
) -> None:
    """The workflow caught a step's ValueError and went on; on replay the same error is raised
    again from the record (the body is not re-run), so the workflow takes the same branch."""
    calls = Calls()

    def build(app: pgdurable.App, crash_after: bool) -> WorkflowFunction[[], str]:
        @app.step()
        def lookup() -> str:
            calls.hit("lookup")
            raise ValueError("no such customer")

        @app.step()
        def fallback(reason: str) -> str:
            if calls.hit("fallback") == 1 and crash_after:
                raise Crash()
            return f"fallback because {reason}"

        @app.workflow()
        def flow() -> str:
            try:
                return lookup()
            except ValueError as exc:
                return fallback(str(exc))

        return flow

    app1 = make_app(lease_seconds=0.5, heartbeat_seconds=0.1)
    app1.start(build(app1, crash_after=True), workflow_id="f1")
    crash(app1, conn, "f1")
    app2 = make_app()
    build(app2, crash_after=False)
    assert app2.resume("f1").result(timeout=10) == "fallback because no such customer"
    assert calls.counts == {"lookup": 1, "fallback": 2}
    steps = app2.list_steps("f1")
    assert [s.status for s in steps] == ["failed", "done"]
    assert steps[0].error is not None and steps[0].error["type"] == "ValueError"


def test_changed_code_at_a_recorded_position_fails_with_nondeterminism(
    make_app: AppFactory, conn: Conn
) -> None:
    calls = Calls()
    app1 = make_app(lease_seconds=0.5, heartbeat_seconds=0.1)

    @app1.step(name="shop.reserve")
    def reserve_v1() -> str:
        calls.hit("reserve")
        return "r"

    @app1.step(name="shop.charge")
    def charge_v1() -> str:
        calls.hit("charge")
        raise Crash()

    @app1.workflow(name="shop.checkout")
    def checkout_v1() -> str:
        return reserve_v1() + charge_v1()

    app1.start(checkout_v1, workflow_id="nd")
    crash(app1, conn, "nd")

    # Version 2 of the code calls a new step first: position 0 was recorded as shop.reserve.
    app2 = make_app()

    @app2.step(name="shop.validate")
    def validate_v2() -> str:
        calls.hit("validate")
        return "v"

    @app2.step(name="shop.reserve")
    def reserve_v2() -> str:
        calls.hit("reserve")
        return "r"

    @app2.workflow(name="shop.checkout")
    def checkout_v2() -> str:
        return validate_v2() + reserve_v2()

    with pytest.raises(pgdurable.WorkflowFailed) as failed:
        app2.resume("nd").result(timeout=10)
    assert "NonDeterminismError" in failed.value.type_name
    assert "shop.reserve" in failed.value.message and "shop.validate" in failed.value.message
    assert calls.counts == {"reserve": 1, "charge": 1}  # validate never ran
    assert run_state(conn, "nd") == ("failed", 2)
    info = app2.get_workflow("nd")
    assert info.error is not None and "NonDeterminismError" in info.error["type"]
