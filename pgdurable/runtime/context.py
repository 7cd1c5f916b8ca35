"""The running workflow's context: its id, fencing epoch, recorded steps and step counter.

Held in a context variable, so a step called anywhere inside a workflow finds its run without
a global singleton, and a step called outside any workflow runs as a plain function.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from pgdurable.core.records import RecordedStep
from pgdurable.runtime.bundle import Runtime


@dataclass
class WorkflowContext:
    runtime: Runtime
    workflow_id: str
    epoch: int
    recorded: dict[int, RecordedStep] = field(default_factory=dict)
    next_step_no: int = 0
    in_step: bool = False  # steps called from inside a step run as plain functions
    suspendable: bool = False  # a worker's run: long sleeps give the run back to its queue
    # Set once the run is known to be no longer this execution's (cancelled, timed out, taken
    # over): seen by the executor's heartbeat or a waiting handle. No new step body starts.
    stopped: threading.Event = field(default_factory=threading.Event)

    def check_stopped(self) -> None:
        """Raise Stopped if the run was cancelled (or taken over) under this execution."""
        if self.stopped.is_set():
            raise Stopped(self.workflow_id)

    def take_step_no(self) -> int:
        """Steps are numbered by call order: the same code replays the same numbers."""
        step_no = self.next_step_no
        self.next_step_no += 1
        return step_no


class Stopped(BaseException):
    """Raised through the workflow body when its run turned out cancelled, timed out or taken
    over before a step body started. A BaseException, so that a workflow's `except Exception`
    does not swallow it; the executor stops the execution quietly, recording nothing."""

    def __init__(self, workflow_id: str) -> None:
        super().__init__(f"workflow {workflow_id!r} is no longer running here (cancelled, "
                         "timed out or taken over): this execution stops")
        self.workflow_id = workflow_id


_current: ContextVar[WorkflowContext | None] = ContextVar("pgdurable_workflow", default=None)


def current() -> WorkflowContext | None:
    """The context of the workflow running in this thread/task, if any."""
    return _current.get()


def workflow_id() -> str | None:
    """The id of the workflow running here, or None outside a workflow."""
    ctx = _current.get()
    return ctx.workflow_id if ctx else None


def activate(ctx: WorkflowContext | None) -> Any:
    return _current.set(ctx)


def deactivate(token: Any) -> None:
    _current.reset(token)
