"""`@app.step(at_most_once=True)`: the intent commits before the body; never re-run."""

from __future__ import annotations

import psycopg
import pytest

import pgdurable
from pgdurable import WorkflowFunction
from tests.support.fixtures import AppFactory
from tests.support.runs import Calls, Crash, run_state, wait_lease_expired
from tests.support.sql import scalar

Conn = psycopg.Connection[tuple[object, ...]]


def build(
    app: pgdurable.App, calls: Calls, *, crash: bool, catch: bool
) -> WorkflowFunction[[str], str]:
    @app.step()
    def prepare(to: str) -> str:
        calls.hit("prepare")
        return f"hello {to}"

    @app.step(at_most_once=True)
    def send_email(text: str) -> str:
        if calls.hit("send_email") == 1 and crash:
            raise Crash()  # the process dies while the email may or may not have gone out
        return f"sent: {text}"

    @app.step()
    def flag_for_review(reason: str) -> str:
        calls.hit("flag")
        return f"review: {reason}"

    @app.workflow()
    def notify(to: str) -> str:
        text = prepare(to)
        if not catch:
            return send_email(text)
        try:
            return send_email(text)
        except pgdurable.StepOutcomeUnknown as exc:
            return flag_for_review(type(exc).__name__)

    return notify


def crash_and_take_over(
    make_app: AppFactory, conn: Conn, calls: Calls, *, catch: bool, workflow_id: str
) -> pgdurable.App:
    app1 = make_app(lease_seconds=0.5, heartbeat_seconds=0.1)
    app1.start(build(app1, calls, crash=True, catch=catch), "ada", workflow_id=workflow_id)
    app1.close()
    wait_lease_expired(conn, workflow_id)
    assert [s.status for s in make_app().list_steps(workflow_id)] == ["done", "started"]
    app2 = make_app()
    build(app2, calls, crash=False, catch=catch)
    return app2


def test_after_a_crash_mid_body_the_workflow_sees_step_outcome_unknown(
    make_app: AppFactory, conn: Conn
) -> None:
    calls = Calls()
    app2 = crash_and_take_over(make_app, conn, calls, catch=False, workflow_id="amo1")
    with pytest.raises(pgdurable.WorkflowFailed) as failed:
        app2.resume("amo1").result(timeout=10)
    assert failed.value.type_name == "pgdurable.errors.StepOutcomeUnknown"
    assert "send_email" in failed.value.message
    assert calls.counts == {"prepare": 1, "send_email": 1}  # the body was not run again
    assert run_state(conn, "amo1") == ("failed", 2)
    assert [s.status for s in app2.list_steps("amo1")] == ["done", "started"]


def test_the_workflow_can_catch_step_outcome_unknown_and_go_on(
    make_app: AppFactory, conn: Conn
) -> None:
    calls = Calls()
    app2 = crash_and_take_over(make_app, conn, calls, catch=True, workflow_id="amo2")
    assert app2.resume("amo2").result(timeout=10) == "review: StepOutcomeUnknown"
    assert calls.counts == {"prepare": 1, "send_email": 1, "flag": 1}
    steps = app2.list_steps("amo2")
    assert [(s.step_no, s.status) for s in steps] == [(0, "done"), (1, "started"), (2, "done")]
    assert run_state(conn, "amo2") == ("succeeded", 2)


def test_intent_is_committed_before_the_body_runs(app: pgdurable.App, dsn: str) -> None:
    seen: list[tuple[object, ...]] = []

    @app.step(at_most_once=True)
    def charge() -> str:
        with psycopg.connect(dsn, autocommit=True) as other:
            row = other.execute("select step_no, status, attempt from pgdurable.steps").fetchone()
            assert row is not None
            seen.append(row)
        return "charged"

    @app.workflow()
    def flow() -> str:
        return charge()

    assert app.start(flow, workflow_id="amo3").result(timeout=10) == "charged"
    assert seen == [(0, "started", 1)]
    [step] = app.list_steps("amo3")
    assert (step.status, step.output) == ("done", "charged")


def test_at_most_once_step_failure_is_recorded_and_replayed(
    app: pgdurable.App, conn: Conn
) -> None:
    calls = Calls()

    @app.step(at_most_once=True, retries=1, interval=0.01)
    def charge() -> str:
        calls.hit("charge")
        raise ValueError("declined")

    @app.workflow()
    def flow() -> str:
        try:
            return charge()
        except ValueError as exc:
            return f"not charged: {exc}"

    assert app.start(flow, workflow_id="amo4").result(timeout=10) == "not charged: declined"
    assert calls["charge"] == 2  # retries still apply inside the one intent
    assert scalar(conn, "select status from pgdurable.steps where workflow_id = 'amo4'") \
        == "failed"
    assert app.start(flow, workflow_id="amo4").result(timeout=10) == "not charged: declined"
    assert calls["charge"] == 2
