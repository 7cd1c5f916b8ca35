"""The admin surface: reading and steering runs, queues and schedules.

What the CLI (and a dashboard) use, apart from the App's registration and execution: it needs
only the store, so it works from any process, whether or not it imports the workflows' code.
"""

from __future__ import annotations

from typing import Any

from pgdurable.api.handles import StepInfo, WorkflowInfo
from pgdurable.core.errors import InvalidArgument, WorkflowNotFound
from pgdurable.store.calls import Store


class Admin:
    def __init__(self, store: Store) -> None:
        self.store = store

    def get_workflow(self, workflow_id: str) -> WorkflowInfo:
        """One run as stored (WorkflowNotFound if there is none)."""
        row = self.store.get_workflow(workflow_id)
        if row is None:
            raise WorkflowNotFound(f"workflow {workflow_id!r} does not exist")
        return WorkflowInfo.model_validate(row)

    def list_workflows(
        self, *, status: str | None = None, name: str | None = None, limit: int = 100
    ) -> list[WorkflowInfo]:
        """The most recent runs first, optionally filtered by status and workflow name."""
        if limit < 1:
            raise InvalidArgument(f"limit must be >= 1, not {limit}")
        rows = self.store.list_workflows(status, name, limit)
        return [WorkflowInfo.model_validate(r) for r in rows]

    def list_steps(self, workflow_id: str) -> list[StepInfo]:
        """The recorded steps of a run, in order."""
        return [StepInfo.model_validate(r) for r in self.store.list_steps(workflow_id)]

    def cancel(self, workflow_id: str, *, cascade: bool = True) -> str:
        """Cancel a run that has not finished and, with `cascade` (the default), every
        unfinished descendant, in one transaction. A cancelled run starts no further step body;
        a step body running when the cancel lands runs to its end and its result is refused.
        Returns the run's status afterwards (WorkflowNotFound for an unknown id)."""
        if not isinstance(cascade, bool):
            raise InvalidArgument(f"cascade must be True or False, not {cascade!r}")
        return self.store.cancel(workflow_id, cascade)

    def requeue(self, workflow_id: str) -> str:
        """Put a failed, cancelled or abandoned run back on its queue for a worker to
        continue from its checkpoints. Returns its status afterwards."""
        return self.store.requeue(workflow_id)

    def queue_stats(self) -> list[dict[str, Any]]:
        """Every queue in the database with its limits, paused flag, ready and running counts."""
        return self.store.queue_stats()

    def pause_queue(self, name: str) -> None:
        """Stop workers from claiming runs of a queue (running ones continue)."""
        self.store.set_queue_paused(name, True)

    def resume_queue(self, name: str) -> None:
        """Let workers claim runs of a paused queue again."""
        self.store.set_queue_paused(name, False)

    def list_schedules(self) -> list[dict[str, Any]]:
        """Every cron schedule stored in the database: expression, workflow, queue, time zone,
        the last tick handled, and the error of the latest tick that could not fire."""
        return self.store.list_schedules()
