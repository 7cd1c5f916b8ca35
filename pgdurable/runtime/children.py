"""Child workflows inside a running workflow: starting them as one checkpointed step, and
waiting for them with the run suspended.

Starting children is a step ('pgdurable.children'): its output is the children's ids, written
in the same transaction as the children, so a replay returns the same ids and starts nothing.
A child's id is derived from its parent's id and the step number unless given. Waiting is a step
too ('pgdurable.gather'): once the wait is over its output is the children's outcomes, so a
replay returns them even after the children were purged. A worker's run that must wait is
suspended in SQL waiting for 'children' (runtime/suspension.py) and holds nothing; the child
whose end completes the wait wakes it in its own final transaction. A run executed in-process
by `app.start` (not suspendable), or one waiting for runs that are not its children, waits in
its thread instead, asking again with a short backoff.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pgdurable.core.records import RecordedStep
from pgdurable.runtime.context import WorkflowContext
from pgdurable.runtime.steps import recorded_step
from pgdurable.runtime.suspension import Suspended

CHILDREN_STEP = "pgdurable.children"
GATHER_STEP = "pgdurable.gather"
WAIT_FOR = "children"


def child_id(parent_id: str, step_no: int, index: int | None = None) -> str:
    """The id of a child started without one: its parent's id and the starting step's number
    (and its index within a batch), so every replay derives the same id."""
    return f"{parent_id}:{step_no}" if index is None else f"{parent_id}:{step_no}:{index}"


def start_children(
    ctx: WorkflowContext, queue: str, name: str,
    runs: Sequence[tuple[str | None, dict[str, Any]]], *, batch: bool, priority: int = 0,
    delay_seconds: float = 0.0, partition_key: str | None = None,
    deadline: datetime | None = None, max_attempts: int = 1, retry_backoff: float = 1.0,
    timeout_seconds: float | None = None,
) -> list[str]:
    """Queue children of the running workflow as one step; returns their ids. `runs`: (id or
    None, encoded inputs) per child; `batch`: ids derived with an index (enqueue_many)."""
    step_no = ctx.take_step_no()
    recorded = recorded_step(ctx, step_no, CHILDREN_STEP)
    if recorded is not None:
        return [str(i) for i in recorded.output]
    named = [(given or child_id(ctx.workflow_id, step_no, i if batch else None), inputs)
             for i, (given, inputs) in enumerate(runs)]
    ids = ctx.runtime.store.start_children(
        ctx.workflow_id, ctx.epoch, step_no, queue, name, named, priority=priority,
        delay_seconds=delay_seconds, partition_key=partition_key, deadline=deadline,
        max_attempts=max_attempts, retry_backoff=retry_backoff, timeout_seconds=timeout_seconds)
    ctx.recorded[step_no] = RecordedStep(step_no, CHILDREN_STEP, "done", ids, None)
    return ids


def await_children(ctx: WorkflowContext, ids: Sequence[str], mode: str) -> list[dict[str, Any]]:
    """Wait for all the runs `ids` ('all') or the first of them to end ('first') as one step;
    returns their outcomes ({id, name, status, output, error}, and index for 'first')."""
    step_no = ctx.take_step_no()
    recorded = recorded_step(ctx, step_no, GATHER_STEP)
    if recorded is not None:
        return list(recorded.output)
    delay = 0.005
    while True:
        results, suspended = ctx.runtime.store.await_children(
            ctx.workflow_id, ctx.epoch, step_no, ids, mode, ctx.suspendable)
        if results is not None:
            ctx.recorded[step_no] = RecordedStep(step_no, GATHER_STEP, "done", results, None)
            return results
        if suspended:
            raise Suspended(ctx.workflow_id, None, WAIT_FOR)
        time.sleep(delay)  # in-process: the children run elsewhere (or in other threads)
        delay = min(delay * 2, 0.25)
