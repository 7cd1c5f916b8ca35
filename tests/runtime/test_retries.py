"""Step retry policies: attempts, exhaustion, retry_on filters and backoff delays."""

from __future__ import annotations

import itertools
import time

import pytest

import pgdurable
from tests.support.runs import Calls


class Flaky(Exception):
    pass


def test_step_succeeds_on_its_third_attempt(app: pgdurable.App) -> None:
    calls = Calls()

    @app.step(retries=2, interval=0.01, backoff=2)
    def fetch() -> str:
        if calls.hit("fetch") < 3:
            raise Flaky("try again")
        return "payload"

    @app.workflow()
    def flow() -> str:
        return fetch()

    assert app.start(flow, workflow_id="r3").result(timeout=10) == "payload"
    assert calls["fetch"] == 3
    [step] = app.list_steps("r3")
    assert (step.status, step.output, step.error) == ("done", "payload", None)


def test_exhausted_retries_give_the_workflow_the_original_exception(app: pgdurable.App) -> None:
    calls = Calls()
    caught: list[BaseException] = []

    @app.step(retries=2, interval=0.01)
    def fetch() -> str:
        raise Flaky(f"attempt {calls.hit('fetch')} failed")

    @app.workflow()
    def flow() -> str:
        try:
            return fetch()
        except Flaky as exc:
            caught.append(exc)
            return "gave up"

    assert app.start(flow, workflow_id="rx").result(timeout=10) == "gave up"
    assert calls["fetch"] == 3
    assert len(caught) == 1 and type(caught[0]) is Flaky
    assert str(caught[0]) == "attempt 3 failed"
    [step] = app.list_steps("rx")
    assert step.status == "failed" and step.output is None
    assert step.error is not None
    assert step.error["type"].endswith("test_retries.Flaky")
    assert step.error["message"] == "attempt 3 failed"


def test_exhausted_retries_fail_an_uncatching_workflow(app: pgdurable.App) -> None:
    @app.step(retries=1, interval=0.01)
    def fetch() -> str:
        raise ValueError("still broken")

    @app.workflow()
    def flow() -> str:
        return fetch()

    with pytest.raises(pgdurable.WorkflowFailed) as failed:
        app.start(flow, workflow_id="ry").result(timeout=10)
    assert (failed.value.type_name, failed.value.message) == ("ValueError", "still broken")


def test_retry_on_limits_which_exceptions_are_retried(app: pgdurable.App) -> None:
    calls = Calls()

    @app.step(retries=3, interval=0.01, retry_on=(KeyError,))
    def lookup(kind: str) -> str:
        n = calls.hit(kind)
        if kind == "value":
            raise ValueError("not transient")
        if n < 3:
            raise KeyError("transient")
        return "found"

    @app.workflow()
    def flow(kind: str) -> str:
        return lookup(kind)

    with pytest.raises(pgdurable.WorkflowFailed, match="not transient"):
        app.start(flow, "value", workflow_id="rv").result(timeout=10)
    assert calls["value"] == 1  # a ValueError is not retried
    assert app.start(flow, "key", workflow_id="rk").result(timeout=10) == "found"
    assert calls["key"] == 3


def test_backoff_delays_are_honoured(app: pgdurable.App) -> None:
    stamps: list[float] = []

    @app.step(retries=3, interval=0.05, backoff=3, max_interval=0.3)
    def fetch() -> str:
        stamps.append(time.monotonic())
        if len(stamps) < 4:
            raise Flaky()
        return "ok"

    @app.workflow()
    def flow() -> str:
        return fetch()

    assert app.start(flow, workflow_id="rb").result(timeout=10) == "ok"
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    # Waits of 0.05, 0.15 and 0.45 capped to 0.3 seconds; only lower bounds are tight.
    assert gaps[0] >= 0.045
    assert gaps[1] >= 0.14
    assert gaps[2] >= 0.28
    assert gaps[2] < 2.0  # the cap holds (0.45 uncapped would be fine too, 1.35 would not)


def test_pgdurable_errors_inside_a_step_are_not_retried(app: pgdurable.App) -> None:
    calls = Calls()

    @app.step(retries=3, interval=0.01)
    def misuse() -> None:
        calls.hit("misuse")
        app.start("no.such.workflow")

    @app.workflow()
    def flow() -> None:
        misuse()

    with pytest.raises(pgdurable.WorkflowFailed) as failed:
        app.start(flow, workflow_id="rp").result(timeout=10)
    assert failed.value.type_name == "pgdurable.errors.RegistrationError"
    assert calls["misuse"] == 1
