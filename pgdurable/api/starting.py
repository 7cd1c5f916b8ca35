"""Starting a run in this process (`app.start`), and cancelling runs from it (`app.cancel`).

Kept out of api/app.py, which is registration and lifecycle; both need the App's executor (to
run the new execution, or to stop local executions of cancelled runs at once).
"""

from __future__ import annotations

import dataclasses
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg

from pgdurable.api.handles import WorkflowHandle
from pgdurable.core.definitions import check_timeout
from pgdurable.core.errors import InvalidArgument

if TYPE_CHECKING:
    from pgdurable.api.app import App
    from pgdurable.api.decorators import WorkflowFunction

R = TypeVar("R")


def start_run(
    app: App,
    wf: WorkflowFunction[Any, R],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    workflow_id: str | None = None,
    conn: psycopg.Connection[Any] | None = None,
    timeout: float | timedelta | None = None,
) -> WorkflowHandle[R]:
    """Create (or find) the run and, if this process is to execute it, submit its execution.
    Everything is validated before anything is written."""
    inputs = wf.signature.encode_args(args, kwargs)  # bad arguments fail here, write nothing
    if workflow_id is not None and (not isinstance(workflow_id, str) or not workflow_id):
        raise InvalidArgument(f"workflow_id must be a non-empty string, not {workflow_id!r}")
    seconds = check_timeout("timeout", timeout)
    if seconds is None:
        seconds = wf.timeout
    wid = workflow_id or str(uuid.uuid4())
    executor = app.executor
    started = app.store.on(conn).start_workflow(wid, wf.name, inputs, executor.worker_id,
                                                app.lease_seconds, seconds)
    xact = started.xact_id if conn is not None else None
    if started.execution is not None:
        # Epoch 1 is a run's first execution ever: it has no checkpoints to load. (Created
        # on the caller's connection, the run may still vanish with a rolled-back
        # savepoint: there load_steps also checks that it exists before anything runs.)
        has_steps = started.execution.epoch > 1 or conn is not None
        executor.submit(wf, dataclasses.replace(started.execution, has_steps=has_steps),
                        after_xact=xact)
    return WorkflowHandle(app, wid, created_in_xact=xact)


def cancel(app: App, workflow_id: str, cascade: bool) -> str:
    """`app.admin.cancel`, then one heartbeat of this process's executor if it runs anything:
    the local executions of the runs just cancelled (the whole subtree) start no further step."""
    status = app.admin.cancel(workflow_id, cascade=cascade)
    if app.connected:
        app.executor.check_now()
    return status
