"""Durable sleep: `pgdurable.sleep(seconds)` inside a workflow.

The wake-up time is recorded as a step (on the database's clock), so an execution that replays
the workflow after a crash waits only for what is left. A queued run (executed by a worker)
whose sleep is longer than `SUSPEND_AFTER_SECONDS` is suspended instead: it goes back to its
queue until the wake-up time and holds no worker slot, thread or process meanwhile. Shorter
sleeps, and every sleep of a run started in-process with `app.start`, wait in the executing
thread while the heartbeat keeps the lease.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timedelta

from pgdurable.core.errors import InvalidArgument
from pgdurable.runtime import context
from pgdurable.runtime.steps import recorded_step

# A worker's run sleeping longer than this is suspended (its slot goes to other runs).
SUSPEND_AFTER_SECONDS = 5.0


class Suspended(BaseException):
    """Raised through the workflow body when its run was suspended until `wake_at`. A
    BaseException, so that a workflow's `except Exception` does not swallow it."""

    def __init__(self, workflow_id: str, wake_at: datetime) -> None:
        super().__init__(f"workflow {workflow_id!r} suspended until {wake_at.isoformat()}")
        self.workflow_id = workflow_id
        self.wake_at = wake_at


def sleep(seconds: float | timedelta) -> None:
    """Sleep durably for `seconds` (>= 0) inside a workflow; outside one, `time.sleep`."""
    value = seconds.total_seconds() if isinstance(seconds, timedelta) else seconds
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or value < 0:
        raise InvalidArgument(f"sleep needs a finite number of seconds >= 0, not {seconds!r}")
    ctx = context.current()
    if ctx is None or ctx.in_step:
        time.sleep(value)
        return
    step_no = ctx.take_step_no()
    recorded_step(ctx, step_no, "pgdurable.sleep")  # NonDeterminismError if another step is
    row = ctx.app.db.fetch_one(
        "sleep_step",
        {"id": ctx.workflow_id, "epoch": ctx.epoch, "step_no": step_no, "seconds": float(value)},
    )
    assert row is not None  # the function returns one row
    remaining = float(row["remaining_seconds"])
    if remaining <= 0:
        return
    if ctx.suspendable and remaining > SUSPEND_AFTER_SECONDS:
        ctx.app.db.fetch_one(
            "suspend", {"id": ctx.workflow_id, "epoch": ctx.epoch, "until": row["wake_at"]})
        raise Suspended(ctx.workflow_id, row["wake_at"])
    time.sleep(remaining)
