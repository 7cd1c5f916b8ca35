"""Suspending a run: the one way a run waits without holding anything.

A suspended run is back in the database as `pending`, with no owner, no thread, no worker slot
and no connection held for it. It is woken by its time (`until`), by a named condition
(`wait_for`, woken by `pgdurable.wake` in SQL), or by whichever comes first; a worker then claims
it with a new epoch and the workflow replays from its checkpoints up to where it waited.

Durable sleep uses it today; messages, events, child workflows and timeouts are meant to use it
too: each checks its condition in SQL under the run's row lock and suspends in the same
transaction, so a wake-up committed meanwhile is never lost.
"""

from __future__ import annotations

from datetime import datetime
from typing import NoReturn

from pgdurable.runtime.context import WorkflowContext


class Suspended(BaseException):
    """Raised through the workflow body once its run is suspended. A BaseException, so that a
    workflow's `except Exception` does not swallow it; the executor stops the execution quietly
    (nothing else is recorded: the run's state is already in the database)."""

    def __init__(self, workflow_id: str, until: datetime | None, wait_for: str | None) -> None:
        waits = [f"until {until.isoformat()}" if until else "", f"for {wait_for}" if wait_for
                 else ""]
        super().__init__(f"workflow {workflow_id!r} suspended {' '.join(w for w in waits if w)}")
        self.workflow_id = workflow_id
        self.until = until
        self.wait_for = wait_for


def suspend(ctx: WorkflowContext, *, until: datetime | None, wait_for: str | None) -> NoReturn:
    """Suspend the running execution's run (fenced: FencedError if it was taken over) and stop
    the execution. Only for a suspendable context (a worker's run): the caller checks."""
    ctx.runtime.store.suspend(ctx.workflow_id, ctx.epoch, until, wait_for)
    raise Suspended(ctx.workflow_id, until, wait_for)
