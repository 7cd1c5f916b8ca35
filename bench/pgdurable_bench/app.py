"""The App that `pgdurable bench` runs: no-op workflows with 0, 1, 3 or K no-op steps, and one
whose single step is an `@app.transaction` writing one row.

Workers load it as `pgdurable_bench.app:app` (with PGDURABLE_DSN pointing at the bench's own
database); the bench process builds its own instance with `build(dsn)`. Names are explicit, so
both sides agree on them however the module is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from pgdurable.api.app import App
from pgdurable.api.children import gather
from pgdurable.api.decorators import WorkflowFunction
from pgdurable.api.queues import Queue
from pgdurable_bench.sql import sql

QUEUE = "bench"
# The step counts with a workflow of their own; any other K runs `bench.noop_k`.
FIXED_STEPS = (0, 1, 3)


@dataclass(frozen=True)
class BenchApp:
    app: App
    queue: Queue
    noop: dict[int, WorkflowFunction[Any, Any]]  # step count -> workflow
    noop_k: WorkflowFunction[Any, Any]           # takes the step count as an argument
    tx: WorkflowFunction[Any, Any]

    def connect(self) -> None:
        """Open the pool, check the schema and declare the queue now, so that no measurement
        pays for it."""
        self.app.db  # noqa: B018

    def flow_and_args(self, steps: int, payload: str) -> tuple[WorkflowFunction[Any, Any],
                                                             tuple[Any, ...]]:
        """The workflow running `steps` no-op steps, and its positional arguments."""
        if steps in self.noop:
            return self.noop[steps], (payload,)
        return self.noop_k, (payload, steps)


def build(dsn: str | None = None, *, pool_size: int = 10) -> BenchApp:
    """A fresh App with the bench workflows registered (nothing connects yet)."""
    app = App(dsn, pool_size=pool_size)
    queue = app.queue(QUEUE)

    @app.step(name="bench.noop_step")
    def noop_step() -> None:
        return None

    @app.transaction(name="bench.insert_row")
    def insert_row(conn: psycopg.Connection[Any], payload: str) -> None:
        conn.execute(sql("tx_insert"), {"payload": payload})

    @app.workflow(name="bench.noop_0")
    def noop_0(payload: str) -> None:
        return None

    @app.workflow(name="bench.noop_1")
    def noop_1(payload: str) -> None:
        noop_step()

    @app.workflow(name="bench.noop_3")
    def noop_3(payload: str) -> None:
        noop_step()
        noop_step()
        noop_step()

    @app.workflow(name="bench.noop_k")
    def noop_k(payload: str, steps: int) -> None:
        for _ in range(steps):
            noop_step()

    @app.workflow(name="bench.transaction")
    def transaction(payload: str) -> None:
        insert_row(payload)

    @app.workflow(name="bench.fanout")
    def fanout(payload: str, children: int) -> int:
        # `children` no-op children started as one step, joined with the parent suspended.
        handles = queue.enqueue_many(noop_0, [(payload,)] * children)
        return len(gather(handles))

    return BenchApp(app, queue, {0: noop_0, 1: noop_1, 3: noop_3}, noop_k, transaction)


# What `pgdurable worker pgdurable_bench.app:app` serves.
app = build().app
