"""Queues declared in code: their limits (stored in the database) and enqueueing."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg

from pgdurable.api.handles import WorkflowHandle
from pgdurable.core.definitions import check_timeout
from pgdurable.core.errors import InvalidArgument
from pgdurable.runtime import children, context
from pgdurable.store.calls import Store

if TYPE_CHECKING:
    from pgdurable.api.app import App
    from pgdurable.api.decorators import WorkflowFunction

R = TypeVar("R")


@dataclass(frozen=True)
class RateLimit:
    """At most `limit` starts in any window of `per_seconds` seconds (exact sliding window)."""

    limit: int
    per_seconds: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1:
            raise InvalidArgument(f"RateLimit limit must be an integer >= 1, not {self.limit!r}")
        if not isinstance(self.per_seconds, int | float) or not math.isfinite(self.per_seconds) \
                or self.per_seconds <= 0:
            raise InvalidArgument(f"RateLimit per_seconds must be > 0, not {self.per_seconds!r}")


def _positive(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(f"{name} must be an integer >= 1 or None, not {value!r}")
    return value


def _check_priority(priority: int) -> None:
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidArgument(f"priority must be an integer, not {priority!r}")


def _check_key(name: str, key: str | None) -> None:
    if key is not None and (not isinstance(key, str) or not key):
        raise InvalidArgument(f"{name} must be a non-empty string or None, not {key!r}")


def _parent_context(conn: psycopg.Connection[Any] | None, dedup_key: str | None
                    ) -> context.WorkflowContext | None:
    """The running workflow whose child a run enqueued here becomes (None outside one, or
    inside one of its steps: there an enqueue is a plain one)."""
    ctx = context.current()
    if ctx is None or ctx.in_step:
        return None
    if conn is not None:
        raise InvalidArgument("inside a workflow, a child is started in the workflow's own "
                              "checkpoint transaction: conn= is not supported there")
    if dedup_key is not None:
        raise InvalidArgument("inside a workflow, a child's id is its idempotency key: "
                              "dedup_key is not supported there")
    return ctx


def _seconds(name: str, value: float | timedelta) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds < 0:
        raise InvalidArgument(f"{name} must be >= 0 seconds, not {value!r}")
    return float(seconds)


class Queue:
    """A named queue with flow-control limits, declared with `app.queue(...)`.

    The limits are written to `pgdurable.queues` when the App first connects (and again on
    each deploy), so every worker and the SQL claim function enforce the same ones.
    """

    def __init__(
        self,
        app: App,
        name: str,
        *,
        concurrency: int | None = None,
        worker_concurrency: int | None = None,
        rate_limit: RateLimit | None = None,
        partition_concurrency: int | None = None,
        max_recoveries: int | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"a queue needs a non-empty name, not {name!r}")
        if rate_limit is not None and not isinstance(rate_limit, RateLimit):
            raise InvalidArgument("rate_limit must be a pgdurable.RateLimit(n, per_seconds=s)")
        self.app = app
        self.name = name
        self.concurrency = _positive("concurrency", concurrency)
        self.worker_concurrency = _positive("worker_concurrency", worker_concurrency)
        self.rate_limit = rate_limit
        self.partition_concurrency = _positive("partition_concurrency", partition_concurrency)
        # None leaves the stored budget alone (10 for a new queue, or what SQL set).
        self.max_recoveries = _positive("max_recoveries", max_recoveries)

    def __repr__(self) -> str:
        return f"Queue({self.name!r})"

    def declare(self, conn: psycopg.Connection[Any] | None = None) -> None:
        """Write this queue's limits to the database (done automatically on connect)."""
        # On `conn` while the App connects; else pooled, retried through a lost connection.
        store = Store.of(conn) if conn is not None else self.app.store
        rate = self.rate_limit
        store.declare_queue(self.name, self.concurrency, self.worker_concurrency,
                            rate.limit if rate else None, rate.per_seconds if rate else None,
                            self.partition_concurrency)
        if self.max_recoveries is not None:
            store.declare_queue_recoveries(self.name, self.max_recoveries)

    def enqueue(
        self,
        fn: WorkflowFunction[Any, R] | str,
        *args: Any,
        workflow_id: str | None = None,
        priority: int = 0,
        delay: float | timedelta = 0.0,
        dedup_key: str | None = None,
        partition_key: str | None = None,
        deadline: datetime | None = None,
        max_attempts: int | None = None,
        timeout: float | timedelta | None = None,
        conn: psycopg.Connection[Any] | None = None,
        **kwargs: Any,
    ) -> WorkflowHandle[R]:
        """Queue a run for a worker and return its handle.

        `priority`: lower runs first (FIFO within a priority). `delay`: seconds (or timedelta)
        before it may start. `dedup_key`: while a run with this key is pending or running in
        this queue, enqueueing again returns that run. `partition_key`: runs sharing it count
        against `partition_concurrency`. `deadline`: if it has not started by then it is
        cancelled. `max_attempts`: executions allowed when it fails (default: the workflow's).
        `timeout`: seconds for the whole run from now, waits included, after which the recovery
        sweep cancels it with its subtree (default: the workflow's). With `conn`, the run is
        written in the caller's transaction (gone on rollback).
        """
        wf = self.app.resolve(fn)
        inputs = wf.signature.encode_args(args, kwargs)  # bad arguments fail here, write nothing
        _check_priority(priority)
        if workflow_id is not None and (not isinstance(workflow_id, str) or not workflow_id):
            raise InvalidArgument(f"workflow_id must be a non-empty string, not {workflow_id!r}")
        _check_key("dedup_key", dedup_key)
        _check_key("partition_key", partition_key)
        seconds = check_timeout("timeout", timeout)
        ctx = _parent_context(conn, dedup_key)
        if ctx is not None:  # a child of the running workflow: a checkpointed start
            [child] = children.start_children(
                ctx, self.name, wf.name, [(workflow_id, inputs)], batch=False,
                priority=priority, delay_seconds=_seconds("delay", delay),
                partition_key=partition_key, deadline=deadline,
                max_attempts=_positive("max_attempts", max_attempts) or wf.max_attempts,
                retry_backoff=wf.retry_backoff,
                timeout_seconds=seconds if seconds is not None else wf.timeout)
            return WorkflowHandle(self.app, child)
        run_id = self.app.store.on(conn).enqueue(
            # The id is chosen here, so a retried call after a lost connection is idempotent.
            self.name, wf.name, inputs, workflow_id or str(uuid.uuid4()),
            priority=priority, delay_seconds=_seconds("delay", delay), dedup_key=dedup_key,
            partition_key=partition_key, deadline=deadline,
            max_attempts=_positive("max_attempts", max_attempts) or wf.max_attempts,
            retry_backoff=wf.retry_backoff,
            timeout_seconds=seconds if seconds is not None else wf.timeout)
        return WorkflowHandle(self.app, run_id)

    def enqueue_many(
        self,
        fn: WorkflowFunction[Any, R] | str,
        args_list: Iterable[Sequence[Any]],
        *,
        priority: int = 0,
        delay: float | timedelta = 0.0,
        partition_key: str | None = None,
        deadline: datetime | None = None,
        max_attempts: int | None = None,
        timeout: float | timedelta | None = None,
        conn: psycopg.Connection[Any] | None = None,
    ) -> list[WorkflowHandle[R]]:
        """Queue one run per item of `args_list` (each a sequence of positional arguments) in
        one round trip. Every item is validated before anything is written. `timeout` as in
        `enqueue`, for every run."""
        wf = self.app.resolve(fn)
        _check_priority(priority)
        seconds = check_timeout("timeout", timeout)
        _check_key("partition_key", partition_key)
        encode = wf.signature.encode_args
        # The ids are chosen here, so a retried call after a lost connection is idempotent.
        runs = []
        for index, item in enumerate(args_list):
            if isinstance(item, str | bytes) or not isinstance(item, Sequence):
                raise InvalidArgument(
                    f"enqueue_many item {index} must be a tuple or list of positional "
                    f"arguments, not {type(item).__name__}"
                )
            runs.append((str(uuid.uuid4()), encode(tuple(item), {})))
        ctx = _parent_context(conn, None)
        if ctx is not None:  # children of the running workflow: one checkpointed step
            ids = children.start_children(
                ctx, self.name, wf.name, [(None, inputs) for _, inputs in runs], batch=True,
                priority=priority, delay_seconds=_seconds("delay", delay),
                partition_key=partition_key, deadline=deadline,
                max_attempts=_positive("max_attempts", max_attempts) or wf.max_attempts,
                retry_backoff=wf.retry_backoff,
                timeout_seconds=seconds if seconds is not None else wf.timeout)
            return [WorkflowHandle(self.app, child) for child in ids]
        self.app.store.on(conn).enqueue_runs(
            self.name, wf.name, runs, priority=priority, delay_seconds=_seconds("delay", delay),
            partition_key=partition_key, deadline=deadline,
            max_attempts=_positive("max_attempts", max_attempts) or wf.max_attempts,
            retry_backoff=wf.retry_backoff,
            timeout_seconds=seconds if seconds is not None else wf.timeout)
        return [WorkflowHandle(self.app, run_id) for run_id, _ in runs]
