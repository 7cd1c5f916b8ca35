"""Handles on runs, and typed rows describing runs and steps."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent import futures
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import pydantic

from pgdurable.core.errors import (
    InvalidArgument,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowNotFound,
    WorkflowTimeout,
)
from pgdurable.runtime import context

if TYPE_CHECKING:
    from pgdurable.api.app import App

R = TypeVar("R")

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})

# How often a handle waiting on a run that executes in this process reads the run anyway, to
# see a cancel (or a timeout) issued elsewhere: one read per this many seconds of waiting.
LOCAL_POLL_SECONDS = 0.2


class WorkflowInfo(pydantic.BaseModel):
    """One row of `pgdurable.workflows`, as stored (inputs and output are raw JSON)."""

    id: str
    name: str
    status: str
    inputs: Any
    output: Any = None
    error: dict[str, Any] | None = None
    attempt: int
    owner: str | None = None
    lease_until: datetime | None = None
    available_at: datetime | None = None  # a pending run: claimable from then (delay, sleep)
    # A suspended (pending) run: the condition it waits for ('sleep', ...); None otherwise.
    waiting_for: str | None = None
    parent_id: str | None = None  # the run that started this one (a child), if any
    forked_from: str | None = None  # the run whose checkpoints a fork copied, if any
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime


class StepInfo(pydantic.BaseModel):
    """One recorded step of a run."""

    step_no: int
    name: str
    status: str
    output: Any = None
    error: dict[str, Any] | None = None
    attempt: int
    started_at: datetime
    finished_at: datetime | None = None


class TreeNode(pydantic.BaseModel):
    """One run of a tree (`Admin.workflow_tree`): its place and status, and its children."""

    id: str
    name: str
    status: str
    depth: int  # 0 for the run asked for
    parent_id: str | None = None
    children: list[TreeNode] = []
    # How many of its children are not in `children` (the tree was cut at its bounds).
    more: int = 0

    def walk(self) -> Iterator[TreeNode]:
        """This run and its shown descendants, depth first."""
        yield self
        for child in self.children:
            yield from child.walk()


class WorkflowHandle(Generic[R]):
    """A handle on one run, wherever it executes. Cheap to create; every call reads the
    database, so a handle stays valid across processes and restarts."""

    def __init__(self, app: App, workflow_id: str, *, created_in_xact: str | None = None) -> None:
        self.app = app
        self.workflow_id = workflow_id
        # Set when the run was created inside the caller's transaction: until that commits the
        # row is invisible, and if it rolls back the run never existed.
        self._created_in_xact = created_in_xact

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.workflow_id!r})"

    def info(self) -> WorkflowInfo:
        info = self._try_info()
        if info is None:
            raise WorkflowNotFound(self._missing_reason())
        return info

    def status(self) -> str:
        """'pending', 'running', 'succeeded', 'failed' or 'cancelled'."""
        return self.info().status

    def result(self, timeout: float | None = None) -> R:
        """Wait until the run finishes and return its output, decoded to the workflow's return
        annotation. Raises WorkflowFailed (with the original error's type, message and
        traceback), WorkflowCancelled (WorkflowTimeout when its timeout cancelled it), or
        TimeoutError. A cancel is seen within about `LOCAL_POLL_SECONDS`, also while the run
        executes in this process (whose execution then starts no further step).

        Inside a running workflow this is `pgdurable.gather([handle])[0]`: a checkpointed wait
        that suspends the run until this one ends (it takes no `timeout` there)."""
        if _in_workflow():
            from pgdurable.api.children import gather

            if timeout is not None:
                raise InvalidArgument(
                    "inside a workflow, handle.result() suspends the run until that run ends "
                    "and takes no timeout (give the workflow a timeout instead)")
            result: R = gather([self])[0]
            return result
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.002
        while True:
            local = self.app.executor.local(self.workflow_id)
            if local is not None:  # executing here: wake as soon as it ends, poll now and then
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                wait = LOCAL_POLL_SECONDS if remaining is None else min(LOCAL_POLL_SECONDS,
                                                                         remaining)
                futures.wait([local], timeout=wait)
                if local.done() and not local.cancelled():
                    outcome = local.result()
                    if outcome is not None and outcome[0] == "succeeded":  # committed, final
                        wf = self.app.registry.workflows.get(outcome[1])
                        if wf is not None:
                            return wf.signature.decode_result(  # type: ignore[no-any-return]
                                outcome[2])
            info = self._try_info()
            if info is None and not self._may_still_appear():
                info = self._try_info()  # its transaction may have committed just now
                if info is None:
                    raise WorkflowNotFound(self._missing_reason())
            if info is not None and info.status in TERMINAL:
                if local is not None and info.status == "cancelled":
                    self.app.executor.stop_local(self.workflow_id)  # no further step here
                return self._outcome(info)
            if info is not None and self._owner_gone(info):
                self.app.take_over(self.workflow_id)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                state = info.status if info else "not yet committed"
                raise TimeoutError(
                    f"workflow {self.workflow_id!r} did not finish within {timeout}s "
                    f"(status: {state})"
                )
            if local is not None:
                continue
            wait = delay if remaining is None else min(delay, remaining)
            local = self.app.executor.local(self.workflow_id)
            if local is not None:
                futures.wait([local], timeout=wait)  # wakes as soon as the local run ends
            else:
                time.sleep(wait)
            delay = min(delay * 2, 0.25)

    def _owner_gone(self, info: WorkflowInfo) -> bool:
        """A running run whose owner's lease expired, which this App can continue: waiting
        for it, we take it over (recovery is lease expiry, whoever notices it first)."""
        return (info.status == "running" and info.lease_until is not None
                and info.lease_until < datetime.now(UTC)
                and info.name in self.app.registry.workflows)

    def _outcome(self, info: WorkflowInfo) -> R:
        if info.status == "succeeded":
            wf = self.app.registry.workflows.get(info.name)
            if wf is None:
                return info.output  # type: ignore[no-any-return]
            return wf.signature.decode_result(info.output)  # type: ignore[no-any-return]
        if info.status == "cancelled":
            if info.error is not None and info.error.get("type") == "WorkflowTimeout":
                raise WorkflowTimeout(self.workflow_id, info.error)
            raise WorkflowCancelled(f"workflow {self.workflow_id!r} was cancelled")
        raise WorkflowFailed(self.workflow_id, info.error or {})

    def _try_info(self) -> WorkflowInfo | None:
        row = self.app.store.get_workflow(self.workflow_id)
        return None if row is None else WorkflowInfo.model_validate(row)

    def _creating_xact_status(self) -> str | None:
        if self._created_in_xact is None:
            return None
        return self.app.store.xact_status(self._created_in_xact)

    def _may_still_appear(self) -> bool:
        """True while the transaction that created the run is still open."""
        return self._creating_xact_status() == "in progress"

    def _missing_reason(self) -> str:
        status = self._creating_xact_status()
        if status == "in progress":
            return (f"workflow {self.workflow_id!r} is not visible yet: the transaction that "
                    "starts it has not committed")
        if status is not None:
            return (f"workflow {self.workflow_id!r} does not exist: the transaction (or "
                    "savepoint) that started it rolled back")
        return f"workflow {self.workflow_id!r} does not exist"


def _in_workflow() -> bool:
    """Called from a workflow's body (not from inside one of its steps)?"""
    ctx = context.current()
    return ctx is not None and not ctx.in_step
