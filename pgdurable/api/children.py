"""Fan-out and fan-in: `pgdurable.gather(handles)` and `pgdurable.wait_first(handles)`.

Inside a running workflow they are checkpointed waits that suspend the run while its children
run (runtime/children.py); outside one they wait like `handle.result()`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg

from pgdurable.api.handles import TERMINAL, WorkflowHandle
from pgdurable.core.definitions import check_timeout
from pgdurable.core.errors import (
    InvalidArgument,
    PgDurableError,
    WorkflowCancelled,
    WorkflowFailed,
)
from pgdurable.runtime import children, context

if TYPE_CHECKING:
    from pgdurable.api.app import App
    from pgdurable.api.decorators import WorkflowFunction

R = TypeVar("R")


def _checked(handles: Sequence[WorkflowHandle[Any]], what: str) -> list[WorkflowHandle[Any]]:
    if isinstance(handles, WorkflowHandle | str | bytes) \
            or not isinstance(handles, Sequence | set | tuple):
        raise InvalidArgument(f"{what} needs a list of workflow handles, not {handles!r}")
    found = list(handles)
    for handle in found:
        if not isinstance(handle, WorkflowHandle):
            raise InvalidArgument(f"{what} needs workflow handles, not {handle!r}")
    if found and any(h.app is not found[0].app for h in found):
        raise InvalidArgument(f"{what}: the handles belong to different Apps")
    return found


def _in_workflow() -> context.WorkflowContext | None:
    ctx = context.current()
    return None if ctx is None or ctx.in_step else ctx


def in_workflow() -> bool:
    """Called from a workflow's body (not from inside one of its steps)?"""
    return _in_workflow() is not None


def start_child(app: App, wf: WorkflowFunction[Any, R], args: tuple[Any, ...],
                kwargs: dict[str, Any], workflow_id: str | None,
                conn: psycopg.Connection[Any] | None, timeout: float | timedelta | None
                ) -> WorkflowHandle[R]:
    """`app.start` inside a workflow: a checkpointed child on the 'default' queue, which this
    process then executes at once unless it runs already (a replay) or a worker took it."""
    ctx = _in_workflow()
    assert ctx is not None
    inputs = wf.signature.encode_args(args, kwargs)  # bad arguments fail here, write nothing
    if workflow_id is not None and (not isinstance(workflow_id, str) or not workflow_id):
        raise InvalidArgument(f"workflow_id must be a non-empty string, not {workflow_id!r}")
    seconds = check_timeout("timeout", timeout)
    if conn is not None:
        raise InvalidArgument("inside a workflow, a child is started in the workflow's own "
                              "checkpoint transaction: conn= is not supported there")
    [child] = children.start_children(ctx, "default", wf.name, [(workflow_id, inputs)],
                                      batch=False, max_attempts=wf.max_attempts,
                                      retry_backoff=wf.retry_backoff,
                                      timeout_seconds=seconds if seconds is not None
                                      else wf.timeout)
    app.take_over(child)
    return WorkflowHandle(app, child)


def _outcome(app: App, entry: dict[str, Any]) -> Any:
    """A child's recorded outcome as the parent sees it: its decoded output, or the error."""
    if entry["status"] == "succeeded":
        wf = app.registry.workflows.get(entry["name"])
        return entry["output"] if wf is None else wf.signature.decode_result(entry["output"])
    if entry["status"] == "cancelled":
        raise WorkflowCancelled(f"workflow {entry['id']!r} was cancelled")
    raise WorkflowFailed(entry["id"], entry["error"] or {})


def gather(handles: Sequence[WorkflowHandle[Any]], return_exceptions: bool = False
           ) -> list[Any]:
    """The results of every run, in order, once all have ended. A failed child raises its
    WorkflowFailed (carrying the child's id and error record), a cancelled one
    WorkflowCancelled, unless `return_exceptions`: then the exception takes its place in the
    list. Inside a workflow the run is suspended until the last child ends (a worker's run
    holds no slot, thread or connection meanwhile) and the outcome is checkpointed."""
    found = _checked(handles, "gather")
    if not found:
        return []
    ctx = _in_workflow()
    if ctx is None:
        entries = [_wait_outside(h) for h in found]
    else:
        entries = children.await_children(ctx, [h.workflow_id for h in found], "all")
    results: list[Any] = []
    for handle, entry in zip(found, entries, strict=True):
        try:
            results.append(_outcome(handle.app, entry))
        except PgDurableError as exc:
            if not return_exceptions:
                raise
            results.append(exc)
    return results


def wait_first(handles: Sequence[WorkflowHandle[Any]]) -> WorkflowHandle[Any]:
    """The handle of the first of these runs to end (succeeded, failed or cancelled). Inside a
    workflow the run is suspended until then, and which one it was is checkpointed."""
    found = _checked(handles, "wait_first")
    if not found:
        raise InvalidArgument("wait_first needs at least one workflow handle")
    ctx = _in_workflow()
    if ctx is not None:
        [entry] = children.await_children(ctx, [h.workflow_id for h in found], "first")
        return found[int(entry["index"])]
    delay = 0.005
    while True:
        for handle in found:
            if handle.status() in TERMINAL:
                return handle
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


def _wait_outside(handle: WorkflowHandle[Any]) -> dict[str, Any]:
    """What the recorded gather step would hold for this run, outside a workflow."""
    try:
        handle.result()
    except (WorkflowFailed, WorkflowCancelled):
        pass
    info = handle.info()
    return {"id": info.id, "name": info.name, "status": info.status, "output": info.output,
            "error": info.error}
