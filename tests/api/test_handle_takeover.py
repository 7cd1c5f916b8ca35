"""A process waiting on a run whose owner died continues it (recovery by lease expiry)."""

from __future__ import annotations

import pytest

import pgdurable
from tests.support.fixtures import AppFactory
from tests.support.runs import Calls, Crash


def _register(app: pgdurable.App, calls: Calls, crash_in_step_2: bool
              ) -> pgdurable.WorkflowFunction[[int], int]:
    @app.step(name="first")
    def first(x: int) -> int:
        calls.hit("first")
        return x + 1

    @app.step(name="second")
    def second(x: int) -> int:
        calls.hit("second")
        if crash_in_step_2:
            raise Crash()
        return x * 10

    @app.workflow(name="takeover-flow")
    def flow(x: int) -> int:
        return second(first(x))

    return flow


def test_waiting_handle_takes_over_an_expired_run(make_app: AppFactory) -> None:
    calls = Calls()
    dying = make_app(lease_seconds=0.5, heartbeat_seconds=0.1)
    flow = _register(dying, calls, crash_in_step_2=True)
    dying.start(flow, 1, workflow_id="w")
    waiter = make_app(lease_seconds=5.0)
    _register(waiter, calls, crash_in_step_2=False)
    handle = waiter.retrieve("w")
    assert handle.result(timeout=15) == 20
    info = handle.info()
    assert info.attempt == 2 and info.status == "succeeded"
    assert calls.counts == {"first": 1, "second": 2}


def test_a_handle_without_the_workflow_only_waits(make_app: AppFactory) -> None:
    calls = Calls()
    dying = make_app(lease_seconds=0.5, heartbeat_seconds=0.1)
    flow = _register(dying, calls, crash_in_step_2=True)
    dying.start(flow, 1, workflow_id="w")
    bystander = make_app()
    with pytest.raises(TimeoutError):
        bystander.retrieve("w").result(timeout=1.5)
    assert bystander.get_workflow("w").attempt == 1


def test_async_functions_are_refused_at_registration(app: pgdurable.App) -> None:
    async def fetch() -> int:
        return 1

    with pytest.raises(pgdurable.RegistrationError, match="async"):
        app.step()(fetch)
    with pytest.raises(pgdurable.RegistrationError, match="async"):
        app.workflow()(fetch)
