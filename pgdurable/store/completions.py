"""Group commit: the step checkpoints and run endings of one process share commits.

An execution that needs a checkpoint or its ending durable queues it and waits until it is
committed (so nothing is reported, and no later step starts, before it is durable). Whoever
finds no commit in progress becomes the leader: it takes everything queued (its own item
first), writes it with one `commit_many` call on its own thread, and hands the lead to the
oldest item that queued up meanwhile. So a lone execution pays no thread hand-off (and a lone
checkpoint is a plain `record_step` call), and under load many executions share a round trip
and a WAL flush.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pgdurable.core import errors
from pgdurable.store.database import jsonb

if TYPE_CHECKING:
    from pgdurable.store.database import Database

MAX_BATCH = 500


@dataclass(eq=False)
class StepRecord:
    """A step outcome to checkpoint. After the commit: `status`/`output`/`error` are the outcome
    on record (ours, or an earlier writer's when `inserted` is false)."""

    workflow_id: str
    epoch: int
    step_no: int
    name: str
    status: str
    output: Any
    error: Any
    inserted: bool = True
    failure: BaseException | None = None


@dataclass(eq=False)
class Ending:
    """How a run ended."""

    workflow_id: str
    epoch: int
    status: str
    output: Any
    error: Any
    failure: BaseException | None = None


@dataclass(eq=False)
class _Waiter:
    item: StepRecord | Ending
    wake: threading.Lock = field(default_factory=threading.Lock)
    done: bool = False  # committed (or failed), results set
    lead: bool = False  # handed the lead: commit what is queued

    def __post_init__(self) -> None:
        self.wake.acquire()  # released once, to wake the waiting thread


class Completions:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._conn = db.pinned()  # used by the leader only, so by one thread at a time
        self._lock = threading.Lock()
        self._queued: list[_Waiter] = []
        self._committing = False
        self._closed = False
        self._idle = threading.Condition(self._lock)

    def record(self, step: StepRecord) -> StepRecord:
        """Checkpoint a step; returns once committed, with the outcome on record. Raises the
        error the database reported for it (FencedError, NonDeterminismError, ...)."""
        self._commit(step)
        if step.failure is not None:
            raise step.failure
        return step

    def finish(self, workflow_id: str, epoch: int, status: str, output: Any, error: Any) -> None:
        """Record how a run ended; returns once committed. Raises FencedError (or the error the
        database reported for this run) if it could not be recorded."""
        ending = Ending(workflow_id, epoch, status, output, error)
        self._commit(ending)
        if ending.failure is not None:
            raise ending.failure

    def release_connection(self) -> None:
        """Give the connection kept for the commits back to the pool, between two commits
        (waiting for one in progress); the next commit takes one from the pool. After the pool
        was drained that is a new connection, which reads the database's session defaults
        afresh (pgdurable.testing's clock relies on this)."""
        with self._lock:
            while self._committing:
                self._idle.wait(0.1)
            self._conn.close()

    def close(self) -> None:
        """Refuse new items; wait (briefly) for a commit in progress."""
        deadline = time.monotonic() + 10
        with self._lock:
            self._closed = True
            while (self._committing or self._queued) and time.monotonic() < deadline:
                self._idle.wait(0.1)
            if not self._committing:
                self._conn.close()

    # -- internals -------------------------------------------------------------------------

    def _commit(self, item: StepRecord | Ending) -> None:
        waiter = _Waiter(item)
        with self._lock:
            if self._closed:
                raise errors.PgDurableError("the App is closed")
            self._queued.append(waiter)
            waiter.lead = not self._committing
            self._committing = True
        if not waiter.lead:
            waiter.wake.acquire()  # until our items are committed or the lead is handed to us
            if waiter.done:
                return
        while not waiter.done:  # leading: commit batches until ours is in one
            with self._lock:
                batch = self._queued[:MAX_BATCH]
                del self._queued[:MAX_BATCH]
            self._write(batch)
            for taken in batch:
                taken.done = True
                if taken is not waiter:
                    taken.wake.release()
        with self._lock:
            if self._queued:
                successor = self._queued[0]
                successor.lead = True
                successor.wake.release()
            else:
                self._committing = False
                self._idle.notify_all()

    def _write(self, batch: list[_Waiter]) -> None:
        steps: list[StepRecord] = []
        endings: list[Ending] = []
        for waiter in batch:
            if isinstance(waiter.item, StepRecord):
                steps.append(waiter.item)
            else:
                endings.append(waiter.item)
        if len(steps) == 1 and not endings:
            self._write_step(steps[0])
            return
        params = {
            "step_ids": [s.workflow_id for s in steps], "step_epochs": [s.epoch for s in steps],
            "step_nos": [s.step_no for s in steps], "step_names": [s.name for s in steps],
            "step_statuses": [s.status for s in steps],
            "step_outputs": [jsonb(s.output) for s in steps],
            "step_errors": [jsonb(s.error) for s in steps],
            "ids": [e.workflow_id for e in endings], "epochs": [e.epoch for e in endings],
            "statuses": [e.status for e in endings],
            "outputs": [jsonb(e.output) for e in endings],
            "errors": [jsonb(e.error) for e in endings],
        }
        try:
            # A deadlock or serialization failure is retried below this call, like a lost
            # connection (db.is_transient): the transaction rolled back, nothing was written.
            rows = self._conn.fetch_all("commit_many", params)
        except errors.ConfigurationError as exc:  # the database is gone (for long)
            everything: list[StepRecord | Ending] = [*steps, *endings]
            for failed in everything:
                failed.failure = exc
            return
        except Exception as exc:
            if len(batch) == 1:
                batch[0].item.failure = exc
                return
            # Something in the batch made the whole statement fail (a value the server refuses,
            # say): nothing was written, so write the items one by one, each getting its own
            # outcome, as they would have without group commit.
            for waiter in batch:
                self._write([waiter])
            return
        for kind, ord_, status, output, error, inserted, sqlstate, message in rows:
            if kind == "step":
                step = steps[ord_ - 1]
                if sqlstate is not None:
                    step.failure = errors.from_sqlstate(sqlstate, message)
                else:
                    step.status, step.output, step.error = status, output, error
                    step.inserted = bool(inserted)
            else:
                endings[ord_ - 1].failure = errors.from_sqlstate(sqlstate, message)

    def _write_step(self, step: StepRecord) -> None:
        """A lone checkpoint (a lone execution): the plain function, a little cheaper."""
        try:
            [(step.status, step.output, step.error, inserted)] = self._conn.fetch_all(
                "record_step",
                {"id": step.workflow_id, "epoch": step.epoch, "step_no": step.step_no,
                 "name": step.name, "status": step.status, "output": jsonb(step.output),
                 "error": jsonb(step.error)})
        except Exception as exc:
            step.failure = exc
            return
        step.inserted = bool(inserted)
