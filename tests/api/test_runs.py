"""The App API around runs: plain calls outside workflows, registration, lookups, timeouts."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest

import pgdurable
from tests.support.fixtures import AppFactory
from tests.support.runs import Calls, Gate, run_state, workflow_count
from tests.support.sql import scalar

Conn = psycopg.Connection[tuple[object, ...]]


def test_steps_called_outside_a_workflow_are_plain_calls(app: pgdurable.App, conn: Conn) -> None:
    calls = Calls()

    @app.step(retries=3, interval=0.01)
    def double(x: int) -> int:
        calls.hit("double")
        if x < 0:
            raise ValueError("negative")
        return 2 * x

    @app.step(at_most_once=True)
    def once(x: int) -> int:
        return x

    assert double(21) == 42
    assert double(21) == 42  # not memoised: a plain call runs every time
    with pytest.raises(ValueError, match="negative"):
        double(-1)
    assert calls["double"] == 3  # no retries outside a workflow
    assert once(5) == 5
    assert pgdurable.workflow_id() is None
    assert workflow_count(conn) == 0
    assert scalar(conn, "select count(*) from pgdurable.steps") == 0


def test_calling_a_workflow_function_runs_it_durably_and_waits(app: pgdurable.App) -> None:
    seen: list[str | None] = []

    @app.workflow()
    def flow(x: int) -> int:
        seen.append(pgdurable.workflow_id())
        return x + 1

    assert flow(1) == 2
    [run] = app.list_workflows(name=flow.name)
    assert seen == [run.id] and run.status == "succeeded"


def test_a_workflow_called_inside_a_workflow_is_a_child(app: pgdurable.App) -> None:
    # (Until child workflows existed this was refused; issue 9 made it a child and a wait.)
    @app.workflow()
    def child() -> int:
        return 1

    @app.workflow()
    def parent() -> int:
        return child() + 1

    assert app.start(parent, workflow_id="p").result(timeout=10) == 2
    assert [(r.id, r.parent_id) for r in app.list_workflows(parent="p")] == [("p:0", "p")]
    assert [s.name for s in app.list_steps("p")] == ["pgdurable.children", "pgdurable.gather"]


def test_registering_two_functions_under_one_name_is_an_error(app: pgdurable.App) -> None:
    @app.step(name="billing.charge")
    def charge() -> None: ...

    def charge_again() -> None: ...

    with pytest.raises(pgdurable.RegistrationError, match=r"billing\.charge"):
        app.step(name="billing.charge")(charge_again)
    with pytest.raises(pgdurable.RegistrationError, match=r"billing\.charge"):
        app.workflow(name="billing.charge")(charge_again)
    with pytest.raises(pgdurable.RegistrationError, match=r"billing\.charge"):
        app.transaction(name="billing.charge")(lambda conn: None)

    registered = []
    with pytest.raises(pgdurable.RegistrationError):
        for _ in range(2):  # the same module.qualname twice

            def handler() -> None: ...

            registered.append(app.workflow()(handler))
    assert len(registered) == 1


def test_unknown_or_foreign_workflows_cannot_be_started(
    app: pgdurable.App, make_app: AppFactory, conn: Conn
) -> None:
    @app.workflow()
    def known() -> int:
        return 1

    with pytest.raises(pgdurable.RegistrationError, match="nope"):
        app.start("nope")
    other = make_app()
    with pytest.raises(pgdurable.RegistrationError, match="another App"):
        other.start(known)
    with pytest.raises(pgdurable.PgDurableError):
        app.start(lambda: 1)  # type: ignore[call-overload]
    assert workflow_count(conn) == 0
    assert app.start(known.name, workflow_id="by-name").result(timeout=10) == 1


def test_invalid_workflow_ids_are_refused(app: pgdurable.App, conn: Conn) -> None:
    @app.workflow()
    def flow() -> int:
        return 1

    for bad in ["", 42]:
        with pytest.raises(pgdurable.InvalidArgument):
            app.start(flow, workflow_id=bad)  # type: ignore[call-overload]
    assert workflow_count(conn) == 0


def test_missing_runs_are_reported(app: pgdurable.App) -> None:
    with pytest.raises(pgdurable.WorkflowNotFound, match="missing"):
        app.retrieve("missing")
    with pytest.raises(pgdurable.WorkflowNotFound, match="missing"):
        app.get_workflow("missing")
    with pytest.raises(pgdurable.WorkflowNotFound, match="missing"):
        app.resume("missing")
    assert app.list_steps("missing") == []


def test_result_times_out_on_a_long_step_and_can_be_awaited_again(
    app: pgdurable.App, gates: Callable[[], Gate]
) -> None:
    gate = gates()

    @app.step()
    def slow() -> str:
        gate.wait()
        return "done"

    @app.workflow()
    def flow() -> str:
        return slow()

    handle = app.start(flow, workflow_id="slow")
    gate.wait_entered()
    with pytest.raises(TimeoutError, match="slow"):
        handle.result(timeout=0.2)
    assert handle.status() == "running"
    gate.open()
    assert handle.result(timeout=10) == "done"
    assert app.retrieve("slow").result(timeout=0.2) == "done"


def test_list_workflows_filters_by_status_and_name(app: pgdurable.App) -> None:
    @app.workflow()
    def ok() -> int:
        return 1

    @app.workflow()
    def bad() -> int:
        raise RuntimeError("no")

    for i in range(3):
        app.start(ok, workflow_id=f"ok-{i}").result(timeout=10)
    with pytest.raises(pgdurable.WorkflowFailed):
        app.start(bad, workflow_id="bad-0").result(timeout=10)
    assert {w.id for w in app.list_workflows(status="succeeded")} == {"ok-0", "ok-1", "ok-2"}
    assert [w.id for w in app.list_workflows(status="failed")] == ["bad-0"]
    assert {w.id for w in app.list_workflows(name=ok.name)} == {"ok-0", "ok-1", "ok-2"}
    assert len(app.list_workflows(limit=2)) == 2
    with pytest.raises(pgdurable.InvalidArgument):
        app.list_workflows(limit=0)


def test_resume_from_an_app_without_the_workflow_changes_nothing(
    app: pgdurable.App, make_app: AppFactory, conn: Conn
) -> None:
    @app.workflow()
    def flow() -> None:
        raise RuntimeError("first failure")

    with pytest.raises(pgdurable.WorkflowFailed):
        app.start(flow, workflow_id="foreign").result(timeout=10)
    stranger = make_app()
    with pytest.raises(pgdurable.RegistrationError):
        stranger.resume("foreign")
    assert run_state(conn, "foreign") == ("failed", 1)
    info = app.get_workflow("foreign")
    assert info.error is not None and info.error["message"] == "first failure"


def test_resume_restarts_a_failed_run_from_its_checkpoints(
    app: pgdurable.App, conn: Conn
) -> None:
    calls = Calls()
    ready: list[bool] = []

    @app.step()
    def expensive() -> int:
        calls.hit("expensive")
        return 41

    @app.workflow()
    def flow() -> int:
        value = expensive()
        if not ready:
            raise RuntimeError("dependency not ready")
        return value + 1

    with pytest.raises(pgdurable.WorkflowFailed, match="dependency not ready"):
        app.start(flow, workflow_id="again").result(timeout=10)
    ready.append(True)
    assert app.resume("again").result(timeout=10) == 42
    assert calls["expensive"] == 1
    info = app.get_workflow("again")
    assert (info.status, info.attempt, info.error) == ("succeeded", 2, None)


def test_resume_reruns_the_failing_step_but_replays_handled_failures(
    app: pgdurable.App, conn: Conn
) -> None:
    calls = Calls()
    gateway_up: list[bool] = []

    @app.step()
    def lookup() -> str:
        calls.hit("lookup")
        raise KeyError("cache miss")

    @app.step()
    def charge() -> str:
        calls.hit("charge")
        if not gateway_up:
            raise ConnectionError("gateway down")
        return "charged"

    @app.workflow()
    def flow() -> str:
        try:
            lookup()
        except KeyError:
            pass  # handled: part of the run's history
        return charge()

    with pytest.raises(pgdurable.WorkflowFailed, match="gateway down"):
        app.start(flow, workflow_id="rerun").result(timeout=10)
    assert [s.status for s in app.list_steps("rerun")] == ["failed", "failed"]
    gateway_up.append(True)
    assert app.resume("rerun").result(timeout=10) == "charged"
    assert calls.counts == {"lookup": 1, "charge": 2}
    assert [s.status for s in app.list_steps("rerun")] == ["failed", "done"]
    assert run_state(conn, "rerun") == ("succeeded", 2)
