"""The admin surface: reading and steering runs, queues and schedules.

What the CLI (and a dashboard) use, apart from the App's registration and execution: it needs
only the store, so it works from any process, whether or not it imports the workflows' code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from pgdurable.api.handles import StepInfo, TreeNode, WorkflowHandle, WorkflowInfo
from pgdurable.core.errors import InvalidArgument, WorkflowNotFound
from pgdurable.store.calls import Store

if TYPE_CHECKING:
    from pgdurable.api.app import App


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
        self, *, status: str | None = None, name: str | None = None, limit: int = 100,
        parent: str | None = None,
    ) -> list[WorkflowInfo]:
        """The most recent runs first, optionally filtered by status, workflow name and parent
        (`parent`: the children of that run)."""
        if limit < 1:
            raise InvalidArgument(f"limit must be >= 1, not {limit}")
        if parent is not None:
            _check_id("parent", parent)
        rows = self.store.list_workflows(status, name, limit, parent)
        return [WorkflowInfo.model_validate(r) for r in rows]

    def workflow_tree(
        self, workflow_id: str, *, max_depth: int = 20, per_parent: int = 100,
        limit: int = 500,
    ) -> TreeNode:
        """A run and its descendants (one recursive statement), breadth first, bounded: at most
        `per_parent` children of each run (oldest first), `max_depth` levels below it and
        `limit` runs in all. A run whose children were left out says how many in `more`."""
        _check_id("workflow_id", workflow_id)
        for label, value in (("max_depth", max_depth), ("per_parent", per_parent),
                             ("limit", limit)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgument(f"{label} must be an integer >= 1, not {value!r}")
        rows = self.store.workflow_tree(workflow_id, max_depth=max_depth,
                                        per_parent=per_parent, limit=limit)
        if not rows:
            raise WorkflowNotFound(f"workflow {workflow_id!r} does not exist")
        nodes = {r["id"]: TreeNode(id=r["id"], name=r["name"], status=r["status"],
                                   depth=r["depth"], parent_id=r["parent_id"],
                                   more=r["children"]) for r in rows}
        for r in rows[1:]:  # ordered by depth, then age: a parent comes before its children
            parent_node = nodes[r["parent_id"]]
            parent_node.children.append(nodes[r["id"]])
            parent_node.more -= 1
        return nodes[rows[0]["id"]]

    def fork(
        self, original_id: str, /, *, from_step: int, workflow_id: str | None = None,
        queue: str | None = None,
    ) -> str:
        """Fork run `original_id`: a new queued run with its inputs and copies of its recorded
        steps 0..from_step-1, which a worker replays and continues from step `from_step`. The
        original is not changed. Returns the new run's id (`workflow_id`, or a UUID); retried
        with the same id, it returns the same fork."""
        _check_id("the run to fork", original_id)
        if isinstance(from_step, bool) or not isinstance(from_step, int) or from_step < 0:
            raise InvalidArgument(f"from_step must be an integer >= 0, not {from_step!r}")
        if workflow_id is not None:
            _check_id("workflow_id", workflow_id)
        if queue is not None:
            _check_id("queue", queue)
        return self.store.fork(original_id, from_step, workflow_id, queue)

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


def _check_id(label: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{label} must be a non-empty string, not {value!r}")


class AdminShortcuts:
    """The admin surface under the App's own names: `app.cancel(id)` is `app.admin.cancel(id)`
    (the App keeps the names users know; the CLI and the dashboard use `app.admin`)."""

    @property
    def admin(self) -> Admin:
        raise NotImplementedError

    def get_workflow(self, workflow_id: str) -> WorkflowInfo:
        return self.admin.get_workflow(workflow_id)

    def list_workflows(
        self, *, status: str | None = None, name: str | None = None, limit: int = 100,
        parent: str | None = None,
    ) -> list[WorkflowInfo]:
        return self.admin.list_workflows(status=status, name=name, limit=limit, parent=parent)

    def fork(self, original_id: str, /, *, from_step: int, workflow_id: str | None = None,
             queue: str | None = None) -> WorkflowHandle[Any]:
        """`admin.fork` (api/admin.py), returning the new run's handle."""
        return WorkflowHandle(cast("App", self), self.admin.fork(
            original_id, from_step=from_step, workflow_id=workflow_id, queue=queue))

    def list_steps(self, workflow_id: str) -> list[StepInfo]:
        return self.admin.list_steps(workflow_id)

    def cancel(self, workflow_id: str) -> str:
        return self.admin.cancel(workflow_id)

    def requeue(self, workflow_id: str) -> str:
        return self.admin.requeue(workflow_id)

    def queue_stats(self) -> list[dict[str, Any]]:
        return self.admin.queue_stats()

    def list_schedules(self) -> list[dict[str, Any]]:
        return self.admin.list_schedules()

    def pause_queue(self, name: str) -> None:
        self.admin.pause_queue(name)

    def resume_queue(self, name: str) -> None:
        self.admin.resume_queue(name)
