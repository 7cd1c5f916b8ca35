"""One typed method per SQL function: the only way the layers above talk to the database.

`Store(db)` runs each call on a pooled autocommit connection (its own transaction, retried
through a lost connection); `store.on(conn)` runs the same calls on the caller's connection,
inside the caller's transaction. The statements are the named ones of sql/queries.sql.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import psycopg
from psycopg.types.json import Jsonb

from pgdurable.core.cron import CronSpec
from pgdurable.core.records import Execution, RecordedStep
from pgdurable.store.database import Database, Params, Row, jsonb, run_query

Conn = psycopg.Connection[Any]


class Runner(Protocol):
    def fetch_all(self, name: str, params: Params | None = None) -> list[Row]: ...


class _OnConnection:
    """Runs named statements on one given connection (no pool, no retries)."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    def fetch_all(self, name: str, params: Params | None = None) -> list[Row]:
        return run_query(self.conn, name, params)


@dataclass(frozen=True)
class Started:
    """What `start_workflow` did: created (or found) the run; `execution` if ours to run."""

    workflow_id: str
    execution: Execution | None
    xact_id: str


class Store:
    def __init__(self, runner: Database | Runner) -> None:
        self._runner = runner

    @classmethod
    def of(cls, conn: Conn) -> Store:
        """Calls on `conn` only (a daemon's own connection, or while the App connects)."""
        return cls(_OnConnection(conn))

    def on(self, conn: Conn | None) -> Store:
        """The same calls inside the caller's transaction on `conn` (None: pooled, as is)."""
        return self if conn is None else Store.of(conn)

    def _all(self, name: str, params: Params | None = None) -> list[Row]:
        return self._runner.fetch_all(name, params)

    def _one(self, name: str, params: Params | None = None) -> Row:
        rows = self._all(name, params)
        assert rows, f"{name} returned no row"
        return rows[0]

    def _maybe(self, name: str, params: Params | None = None) -> Row | None:
        rows = self._all(name, params)
        return rows[0] if rows else None

    # -- runs started in-process ---------------------------------------------------------

    def start_workflow(self, workflow_id: str, name: str, inputs: dict[str, Any], owner: str,
                       lease_seconds: float, timeout_seconds: float | None = None) -> Started:
        row = self._one("start_workflow", {"id": workflow_id, "name": name,
                                           "inputs": jsonb(inputs), "owner": owner,
                                           "lease_seconds": lease_seconds,
                                           "timeout_seconds": timeout_seconds})
        execution = (Execution(workflow_id, row["name"], row["epoch"], row["inputs"])
                     if row["started"] else None)
        return Started(workflow_id, execution, row["xact_id"])

    def acquire(self, workflow_id: str, owner: str, lease_seconds: float) -> Execution | None:
        """Own a pending run, or one whose lease expired (None if not available)."""
        return self._execution("acquire", workflow_id, owner, lease_seconds)

    def resume(self, workflow_id: str, owner: str, lease_seconds: float) -> Execution | None:
        """Own a run to continue it (expired, failed or cancelled; None if left alone)."""
        return self._execution("resume", workflow_id, owner, lease_seconds)

    def _execution(self, call: str, workflow_id: str, owner: str, lease_seconds: float
                   ) -> Execution | None:
        row = self._maybe(call, {"id": workflow_id, "owner": owner,
                                 "lease_seconds": lease_seconds})
        return None if row is None else Execution(row["id"], row["name"], row["epoch"],
                                                  row["inputs"])

    def heartbeat(self, owner: str, ids: Sequence[str], lease_seconds: float
                  ) -> tuple[int, list[str]]:
        """Renew the leases of `owner`'s running runs among `ids`. Returns how many were
        renewed and the ids that exist but are no longer running under `owner` (cancelled,
        timed out, taken over)."""
        row = self._one("heartbeat", {"owner": owner, "ids": list(ids),
                                      "lease_seconds": lease_seconds})
        return int(row["renewed"]), list(row["lost"] or [])

    def xact_status(self, xact_id: str) -> str | None:
        """'committed', 'aborted' or 'in progress' (None: too old to know)."""
        row = self._maybe("xact_status", {"xact_id": xact_id})
        return None if row is None else row["status"]

    # -- steps ------------------------------------------------------------------------------

    def load_steps(self, workflow_id: str, epoch: int) -> dict[int, RecordedStep]:
        """A run's recorded steps by position (fenced: raises if the epoch is stale)."""
        rows = self._all("load_steps", {"id": workflow_id, "epoch": epoch})
        return {r["step_no"]: RecordedStep(r["step_no"], r["name"], r["status"], r["output"],
                                           r["error"]) for r in rows}

    def begin_step(self, workflow_id: str, epoch: int, step_no: int, name: str
                   ) -> tuple[RecordedStep, bool]:
        """Commit an at-most-once step's intent. Returns what is on record and whether the
        intent is new (False: an earlier execution began or finished it)."""
        row = self._one("begin_step", {"id": workflow_id, "epoch": epoch, "step_no": step_no,
                                       "name": name})
        return (RecordedStep(step_no, name, row["status"], row["output"], row["error"]),
                bool(row["is_new"]))

    def record_step(self, workflow_id: str, epoch: int, step_no: int, name: str, status: str,
                    output: Any, error: Any) -> tuple[RecordedStep, bool]:
        """Checkpoint a step outcome. Returns the outcome on record and whether it is ours."""
        row = self._one("record_step", {"id": workflow_id, "epoch": epoch, "step_no": step_no,
                                        "name": name, "status": status,
                                        "output": jsonb(output), "error": jsonb(error)})
        return (RecordedStep(step_no, name, row["status"], row["output"], row["error"]),
                bool(row["inserted"]))

    def sleep_step(self, workflow_id: str, epoch: int, step_no: int, seconds: float
                   ) -> tuple[datetime, float]:
        """Record a durable sleep (or read the recorded one): its wake-up time and the seconds
        still to wait."""
        row = self._one("sleep_step", {"id": workflow_id, "epoch": epoch, "step_no": step_no,
                                       "seconds": seconds})
        return row["wake_at"], float(row["remaining_seconds"])

    def suspend(self, workflow_id: str, epoch: int, until: datetime | None,
                wait_for: str | None) -> None:
        """Suspend a running execution's run until `until` and/or until woken for `wait_for`
        (fenced: FencedError if the epoch is stale)."""
        self._all("suspend", {"id": workflow_id, "epoch": epoch, "until": until,
                              "wait_for": wait_for})

    def wake(self, workflow_id: str, condition: str) -> bool:
        """Wake a run suspended waiting for `condition` (False: it was not)."""
        return bool(self._one("wake", {"id": workflow_id, "condition": condition})["woken"])

    def start_children(self, parent: str, epoch: int, step_no: int, queue: str, name: str,
                       runs: list[tuple[str, dict[str, Any]]], *, priority: int,
                       delay_seconds: float, partition_key: str | None,
                       deadline: datetime | None, max_attempts: int, retry_backoff: float,
                       timeout_seconds: float | None) -> list[str]:
        """Queue child runs of `parent` as its step `step_no`, in one statement; returns the
        children's ids (the recorded ones on a replay)."""
        ids = self._one("start_children", {
            "parent": parent, "epoch": epoch, "step_no": step_no, "queue": queue,
            "name": name, "runs": Jsonb(runs), "priority": priority,
            "delay_seconds": delay_seconds, "partition_key": partition_key,
            "deadline": deadline, "max_attempts": max_attempts,
            "retry_backoff": retry_backoff, "timeout_seconds": timeout_seconds})["ids"]
        return [str(i) for i in ids]

    def await_children(self, workflow_id: str, epoch: int, step_no: int, ids: Sequence[str],
                       mode: str, suspend: bool) -> tuple[list[dict[str, Any]] | None, bool]:
        """The outcomes of the runs waited for ('all' or the 'first' to end) once the wait is
        over (recorded as step `step_no`), else None; and whether the run was suspended (with
        `suspend`, when every run waited for is a child of `workflow_id`)."""
        row = self._one("await_children", {"id": workflow_id, "epoch": epoch,
                                           "step_no": step_no, "ids": list(ids), "mode": mode,
                                           "suspend": suspend})
        results: list[dict[str, Any]] | None = row["results"] if row["ready"] else None
        return results, bool(row["suspended"])

    # -- queues -------------------------------------------------------------------------------

    def declare_queue(self, name: str, concurrency: int | None, worker_concurrency: int | None,
                      rate_limit: int | None, rate_period_seconds: float | None,
                      partition_concurrency: int | None) -> None:
        self._all("declare_queue", {
            "name": name, "concurrency": concurrency, "worker_concurrency": worker_concurrency,
            "rate_limit": rate_limit, "rate_period_seconds": rate_period_seconds,
            "partition_concurrency": partition_concurrency})

    def declare_queue_recoveries(self, name: str, max_recoveries: int) -> None:
        self._all("declare_queue_recoveries", {"name": name, "max_recoveries": max_recoveries})

    def set_queue_paused(self, name: str, paused: bool) -> bool:
        return bool(self._one("set_queue_paused", {"name": name, "paused": paused})["paused"])

    def existing_queues(self, names: Sequence[str]) -> set[str]:
        return {r["name"] for r in self._all("existing_queues", {"names": list(names)})}

    def queue_stats(self) -> list[Row]:
        return self._all("queue_stats")

    def enqueue(self, queue: str, name: str, inputs: dict[str, Any], workflow_id: str, *,
                priority: int, delay_seconds: float, dedup_key: str | None,
                partition_key: str | None, deadline: datetime | None, max_attempts: int,
                retry_backoff: float, timeout_seconds: float | None = None) -> str:
        """Queue a run; returns its id (an existing run's, for a live dedup key)."""
        return str(self._one("enqueue", {
            "queue": queue, "name": name, "inputs": jsonb(inputs), "id": workflow_id,
            "priority": priority, "delay_seconds": delay_seconds, "dedup_key": dedup_key,
            "partition_key": partition_key, "deadline": deadline,
            "max_attempts": max_attempts, "retry_backoff": retry_backoff,
            "timeout_seconds": timeout_seconds})["id"])

    def enqueue_runs(self, queue: str, name: str, runs: list[tuple[str, dict[str, Any]]], *,
                     priority: int, delay_seconds: float, partition_key: str | None,
                     deadline: datetime | None, max_attempts: int, retry_backoff: float,
                     timeout_seconds: float | None = None) -> int:
        """Queue many runs, given as (id, inputs) pairs, with one statement."""
        # One JSON document for the whole batch: encoded in one call, sent as one parameter.
        return int(self._one("enqueue_many", {
            "queue": queue, "name": name, "runs": Jsonb(runs), "priority": priority,
            "delay_seconds": delay_seconds, "partition_key": partition_key,
            "deadline": deadline, "max_attempts": max_attempts,
            "retry_backoff": retry_backoff,
            "timeout_seconds": timeout_seconds})["written"] or 0)

    def claim(self, worker: str, queues: Sequence[str], limit: int, lease_seconds: float,
              names: Sequence[str]) -> list[Execution]:
        rows = self._all("claim", {"worker": worker, "queues": list(queues), "max": limit,
                                   "lease_seconds": lease_seconds, "names": list(names)})
        return [Execution(r["id"], r["name"], r["epoch"], r["inputs"], has_steps=r["has_steps"])
                for r in rows]

    def release(self, workflow_id: str, epoch: int) -> None:
        self._all("release", {"id": workflow_id, "epoch": epoch})

    def requeue_expired(self, queues: Sequence[str], limit: int) -> int:
        row = self._one("requeue_expired", {"queues": list(queues), "limit": limit})
        return int(row["requeued"] or 0)

    # -- steering and reading -------------------------------------------------------------

    def cancel(self, workflow_id: str, cascade: bool = True) -> str:
        """Cancel a run (and with `cascade` its unfinished descendants); its status after."""
        return str(self._one("cancel", {"id": workflow_id, "cascade": cascade})["status"])

    def requeue(self, workflow_id: str) -> str:
        return str(self._one("requeue", {"id": workflow_id})["status"])

    def get_workflow(self, workflow_id: str) -> Row | None:
        return self._maybe("get_workflow", {"id": workflow_id})

    def list_workflows(self, status: str | None, name: str | None, limit: int,
                       parent: str | None = None) -> list[Row]:
        return self._all("list_workflows", {"status": status, "name": name, "limit": limit,
                                            "parent": parent})

    def workflow_tree(self, workflow_id: str, *, max_depth: int, per_parent: int, limit: int
                      ) -> list[Row]:
        """A run and its descendants, breadth first, bounded (no row: no such run)."""
        return self._all("workflow_tree", {"id": workflow_id, "max_depth": max_depth,
                                           "per_parent": per_parent, "limit": limit})

    def fork(self, workflow_id: str, from_step: int, new_id: str | None, queue: str | None
             ) -> str:
        """A new queued run with `workflow_id`'s inputs and steps 0..from_step-1; its id."""
        return str(self._one("fork", {"id": workflow_id, "from_step": from_step,
                                      "new_id": new_id, "queue": queue})["id"])

    def list_steps(self, workflow_id: str) -> list[Row]:
        return self._all("list_steps", {"id": workflow_id})

    # -- schedules and recovery -----------------------------------------------------------

    def declare_schedule(self, name: str, spec: CronSpec, workflow_name: str, queue: str,
                         inputs: dict[str, Any], timezone: str, catch_up: bool) -> None:
        self._all("declare_schedule", {
            "name": name, "cron": spec.expression, "workflow_name": workflow_name,
            "queue": queue, "inputs": jsonb(inputs), "timezone": timezone,
            "catch_up": catch_up, "minutes": list(spec.minutes), "hours": list(spec.hours),
            "days": list(spec.days), "months": list(spec.months),
            "weekdays": list(spec.weekdays), "days_restricted": spec.days_restricted,
            "weekdays_restricted": spec.weekdays_restricted})

    def list_schedules(self) -> list[Row]:
        return self._all("list_schedules")

    def recover_sweep(self, limit: int, retention_seconds: float) -> dict[str, int]:
        row = self._one("recover_sweep", {"limit": limit,
                                          "retention_seconds": retention_seconds})
        counts: dict[str, int] = row["counts"]
        return counts

    def recovery_leader_lock(self) -> bool:
        """Try to become the recovery leader (a session lock: only on a connection you keep)."""
        return bool(self._one("recovery_leader_lock")["leader"])
