"""Executing one step of a running workflow: replay, retries, checkpoint.

The floor is one commit per step: the recorded steps of a run are loaded once when its
execution starts, so replaying a step costs nothing. A new plain step's checkpoint goes through
the App's group commit (completions.py), which writes the checkpoints of concurrent executions
with one round trip and one commit; the step returns once it is durable. A transaction step
checkpoints with one `record_step` call inside the user's own transaction.

No step body starts once the execution's context is stopped (the run was cancelled, timed out or
taken over, as the heartbeat or a waiting handle learned): an in-memory check, no round trip. A
step with a `timeout` runs each attempt's body in a helper thread and stops waiting for it after
the timeout (StepTimeout, a failure like any other); the abandoned body runs to its end there
and its result is discarded.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import psycopg

from pgdurable.core.definitions import (
    RetryPolicy,
    StepDefinition,
    TransactionDefinition,
    is_step_failure,
)
from pgdurable.core.errors import NonDeterminismError, StepOutcomeUnknown, StepTimeout
from pgdurable.core.records import RecordedStep
from pgdurable.core.serde import as_stored, error_record, rebuild_exception
from pgdurable.runtime import context
from pgdurable.runtime.context import WorkflowContext
from pgdurable.store.completions import StepRecord

log = logging.getLogger("pgdurable.steps")


class _RecordedElsewhere(Exception):
    """Rolls back a transaction step whose position another execution already recorded."""

    def __init__(self, recorded: RecordedStep) -> None:
        self.recorded = recorded


def run_step(ctx: WorkflowContext, step: StepDefinition, body: Callable[[], Any]) -> Any:
    step_no = ctx.take_step_no()
    recorded = recorded_step(ctx, step_no, step.name)
    if recorded is not None:
        return _outcome(recorded, step)
    if step.at_most_once:
        recorded, is_new = ctx.runtime.store.begin_step(ctx.workflow_id, ctx.epoch, step_no,
                                                        step.name)
        if not is_new:
            return _outcome(recorded, step)

    timeout = step.timeout
    if timeout is None:
        def attempt() -> Any:
            return _in_step(ctx, body)
    else:
        def attempt() -> Any:
            return _in_step(ctx, lambda: _with_timeout(ctx, step.name, timeout, body))
    try:
        value = _with_retries(ctx, step.policy, step.name, step_no, attempt)
    except _RecordedElsewhere as elsewhere:
        return _outcome(elsewhere.recorded, step)
    output = step.signature.encode_result(value)
    recorded, _ = _record(ctx, step_no, step.name, "done", output, None)
    return _outcome(recorded, step)


def run_transaction(
    ctx: WorkflowContext,
    step: TransactionDefinition,
    body: Callable[[psycopg.Connection[Any]], Any],
) -> Any:
    step_no = ctx.take_step_no()
    recorded = recorded_step(ctx, step_no, step.name)
    if recorded is not None:
        return _outcome(recorded, step)

    def attempt(timeout: float) -> RecordedStep:
        # The user's writes and the checkpoint commit together, or not at all.
        try:
            with ctx.runtime.db.connection(timeout) as conn, conn.transaction():
                output = step.signature.encode_result(_in_step(ctx, lambda: body(conn)))
                result, inserted = _record(ctx, step_no, step.name, "done", output, None, conn=conn)
                if not inserted:
                    raise _RecordedElsewhere(result)
                return result
        except _RecordedElsewhere as elsewhere:
            return elsewhere.recorded

    def until_committed() -> RecordedStep:
        return _redo_rolled_back_transactions(ctx, step_no, step.name, attempt)

    try:
        result = _with_retries(ctx, step.policy, step.name, step_no, until_committed)
    except _RecordedElsewhere as elsewhere:
        result = elsewhere.recorded
    return _outcome(result, step)


def _redo_rolled_back_transactions(
    ctx: WorkflowContext, step_no: int, name: str, attempt: Callable[[float], RecordedStep]
) -> RecordedStep:
    """Run a transaction step's attempt again when the database, not the user's code, ended
    its transaction: the connection was lost (server restart, killed backend) or the server
    rolled it back (serialization failure, deadlock). None of these is the step's outcome, so
    the retries do not count against the step's retry policy; they share the backoff and budget
    of every pooled call (then DatabaseUnavailable, recording nothing). A connection lost during
    COMMIT leaves the outcome unknown, so every new attempt first looks for a recorded outcome;
    the checkpoint in the same transaction makes the user's writes exactly-once either way."""
    first = True

    def once(timeout: float) -> RecordedStep:
        nonlocal first
        if not first:
            recorded = _recorded_now(ctx, step_no, name)
            if recorded is not None:
                return recorded
        first = False
        return attempt(timeout)

    return ctx.runtime.db.retrying(f"transaction step {name} of {ctx.workflow_id}", once)


def _recorded_now(ctx: WorkflowContext, step_no: int, name: str) -> RecordedStep | None:
    """The step's outcome as the database has it now (fenced: raises if taken over)."""
    ctx.recorded.update(ctx.runtime.store.load_steps(ctx.workflow_id, ctx.epoch))
    return recorded_step(ctx, step_no, name)


def recorded_step(ctx: WorkflowContext, step_no: int, name: str) -> RecordedStep | None:
    """The outcome recorded at `step_no`, if any; NonDeterminismError if another step is."""
    recorded = ctx.recorded.get(step_no)
    if recorded is not None and recorded.name != name:
        raise NonDeterminismError(
            f"workflow {ctx.workflow_id!r} step {step_no} was recorded as {recorded.name!r} "
            f"but the code now calls {name!r}: steps must be called in the same order on replay"
        )
    return recorded


def _with_timeout(ctx: WorkflowContext, name: str, timeout: float,
                  body: Callable[[], Any]) -> Any:
    """Run one attempt's body in a helper thread; StepTimeout if it has not returned after
    `timeout` seconds. Python cannot stop a thread: the abandoned body runs to its end, and its
    result (or error) is dropped. Steps it calls run as plain functions (its context is marked
    in a step for good), so it never writes checkpoints."""
    outcome: Future[Any] = Future()
    inner = dataclasses.replace(ctx, in_step=True)
    copied = contextvars.copy_context()

    def target() -> None:
        try:
            copied.run(context.activate, inner)
            outcome.set_result(copied.run(body))
        except BaseException as exc:  # handed to the waiting thread
            outcome.set_exception(exc)

    threading.Thread(target=target, name=f"pgdurable-step-{name}", daemon=True).start()
    try:
        return outcome.result(timeout)
    except FutureTimeout:
        raise StepTimeout(
            f"step {name!r} of workflow {ctx.workflow_id!r} did not finish within {timeout}s "
            "(its body was abandoned and keeps running in a helper thread; its result is "
            "discarded)") from None


def _in_step(ctx: WorkflowContext, body: Callable[[], Any]) -> Any:
    ctx.check_stopped()  # a cancelled run starts no step body
    ctx.in_step = True
    try:
        return body()
    finally:
        ctx.in_step = False


def _with_retries(
    ctx: WorkflowContext, policy: RetryPolicy, name: str, step_no: int, body: Callable[[], Any]
) -> Any:
    """Run `body`, retrying per the policy. After the last attempt the failure is recorded
    (so replay raises it again without re-running) and the original exception propagates."""
    retry = 0
    while True:
        try:
            return body()
        except Exception as exc:
            retry += 1
            delay = policy.delay_before(retry) if policy.retries_on(exc) else None
            if delay is None:
                # pgdurable's own errors (fencing, serialisation, ...) are not step outcomes.
                if is_step_failure(exc):
                    recorded, inserted = _record(
                        ctx, step_no, name, "failed", None, error_record(exc))
                    if not inserted:  # an earlier attempt's outcome is on record: it counts
                        raise _RecordedElsewhere(recorded) from exc
                raise
            log.info("step %s of %s failed (%s), retry %d in %.2fs",
                     name, ctx.workflow_id, type(exc).__name__, retry, delay)
            if ctx.stopped.wait(delay):  # cancelled while waiting to retry
                ctx.check_stopped()


def _record(
    ctx: WorkflowContext,
    step_no: int,
    name: str,
    status: str,
    output: Any,
    error: dict[str, Any] | None,
    *,
    conn: psycopg.Connection[Any] | None = None,
) -> tuple[RecordedStep, bool]:
    """Checkpoint a step outcome now (on `conn`, inside its transaction, if given; else through
    the group commit). Returns the outcome now on record (ours, or an earlier writer's) and
    whether ours was the one inserted."""
    if conn is None:
        written = ctx.runtime.completions.record(
            StepRecord(ctx.workflow_id, ctx.epoch, step_no, name, status, output, error))
        recorded = (RecordedStep(step_no, name, status, as_stored(output), as_stored(error))
                    if written.inserted else
                    RecordedStep(step_no, name, written.status, written.output, written.error))
        ctx.recorded[step_no] = recorded
        return recorded, written.inserted
    recorded, inserted = ctx.runtime.store.on(conn).record_step(
        ctx.workflow_id, ctx.epoch, step_no, name, status, output, error)
    ctx.recorded[step_no] = recorded
    return recorded, inserted


def _outcome(recorded: RecordedStep, step: StepDefinition | TransactionDefinition) -> Any:
    """What the workflow sees for a recorded step: the decoded output, or the recorded error."""
    if recorded.status == "done":
        return step.signature.decode_result(recorded.output)
    if recorded.status == "started":
        raise StepOutcomeUnknown(
            f"at-most-once step {step.name!r} (position {recorded.step_no}) began in an earlier "
            "execution that stopped before it finished; it is not run again"
        )
    raise rebuild_exception(recorded.error or {})
