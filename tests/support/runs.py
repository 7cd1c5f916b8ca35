"""In-process helpers for tests of Apps: gates that hold a step body, call counters, simulated
crashes, and a run's state as the database has it."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

import pgdurable
from pgdurable.testing import SimulatedCrash as Crash

from .sql import scalar
from .waiting import wait_until

__all__ = ["FUTURE", "Calls", "Crash", "Gate", "lease_expired", "run_state",
           "wait_lease_expired", "workflow_count"]

# A `pgdurable.now` far in the future: an App whose connections set it sees every other
# owner's lease as expired, so it can take a run over while the first owner still heartbeats.
FUTURE = "2100-01-01T00:00:00+00:00"

Conn = psycopg.Connection[Any]


class Gate:
    """Blocks a step body until the test opens it. `wait` never blocks forever, so a test that
    fails half-way cannot hang the teardown (which waits for execution threads)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self._open = threading.Event()

    def wait(self, timeout: float = 30.0) -> None:
        self.entered.set()
        if not self._open.wait(timeout):
            raise RuntimeError("gate was never opened")

    def open(self) -> None:
        self._open.set()

    def wait_entered(self, timeout: float = 15.0) -> None:
        assert self.entered.wait(timeout), "the step never reached its gate"


class Calls:
    """Thread-safe count of step-body executions, by label."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.log: list[str] = []

    def hit(self, label: str) -> int:
        """Count one execution of `label`; returns how many there have been (1 = first)."""
        with self._lock:
            self.counts[label] += 1
            self.log.append(label)
            return self.counts[label]

    def __getitem__(self, label: str) -> int:
        with self._lock:
            return self.counts[label]


def workflow_count(conn: Conn) -> int:
    return int(scalar(conn, "select count(*) from pgdurable.workflows"))


def run_state(conn: Conn, workflow_id: str) -> tuple[str, int] | None:
    """(status, epoch) of a run, or None if there is no such run."""
    row = conn.execute(
        "select status, attempt from pgdurable.workflows where id = %s", (workflow_id,)
    ).fetchone()
    return None if row is None else (row[0], row[1])


def lease_expired(conn: Conn, workflow_id: str) -> bool:
    return bool(scalar(
        conn,
        "select status = 'running' and lease_until < pgdurable.now() "
        "from pgdurable.workflows where id = %s",
        (workflow_id,),
    ))


def wait_lease_expired(conn: Conn, workflow_id: str) -> None:
    wait_until(lambda: lease_expired(conn, workflow_id), timeout=15,
               what=f"the lease of {workflow_id!r} to expire")


@contextmanager
def background_worker(app: pgdurable.App, *queues: str, concurrency: int = 4
                      ) -> Iterator[pgdurable.Worker]:
    """An in-process worker serving in a thread until the block ends."""
    worker = pgdurable.Worker(app, queues=list(queues) or None, concurrency=concurrency,
                              poll_interval=0.02)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(15)
        assert not thread.is_alive()
