"""Durable sleep: `pgdurable.sleep(seconds)` inside a workflow.

The wake-up time is recorded as a step (on the database's clock), so an execution that replays
the workflow after a crash waits only for what is left. A queued run (executed by a worker)
whose sleep is longer than `SUSPEND_AFTER_SECONDS` is suspended instead (runtime/suspension.py):
it waits in the database until the wake-up time, holding no worker slot, thread or process.
Shorter sleeps, and every sleep of a run started in-process with `app.start`, wait in the
executing thread while the heartbeat keeps the lease.
"""

from __future__ import annotations

import math
import time
from datetime import timedelta

from pgdurable.core.errors import InvalidArgument
from pgdurable.runtime import context
from pgdurable.runtime.steps import recorded_step
from pgdurable.runtime.suspension import suspend

# A worker's run sleeping longer than this is suspended (its slot goes to other runs).
SUSPEND_AFTER_SECONDS = 5.0

# The condition a sleeping run waits for, as shown in `workflows show` (woken by time only).
SLEEP = "sleep"


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
    wake_at, remaining = ctx.runtime.store.sleep_step(ctx.workflow_id, ctx.epoch, step_no,
                                                      float(value))
    if remaining <= 0:
        return
    if ctx.suspendable and remaining > SUSPEND_AFTER_SECONDS:
        suspend(ctx, until=wake_at, wait_for=SLEEP)
    if ctx.stopped.wait(remaining):  # cancelled (or timed out) while sleeping here: stop now
        ctx.check_stopped()
