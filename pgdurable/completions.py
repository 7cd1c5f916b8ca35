"""Group commit for finishing runs: the executions of one process share one commit.

An execution that finishes hands its outcome to the flusher thread and waits until it is
durable (so a result is never reported before it is committed). The flusher writes everything
that queued up meanwhile with one `finish_many` call: under load many runs share a round trip
and a WAL flush; when idle a lone run is written at once.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg

from pgdurable import errors
from pgdurable.db import jsonb

if TYPE_CHECKING:
    from pgdurable.db import Database

MAX_BATCH = 500


@dataclass
class _Outcome:
    workflow_id: str
    epoch: int
    status: str
    output: Any
    error: Any
    done: threading.Event = field(default_factory=threading.Event)
    failure: BaseException | None = None


class Completions:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._pending: list[_Outcome] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def finish(self, workflow_id: str, epoch: int, status: str, output: Any, error: Any) -> None:
        """Record how a run ended; returns once committed. Raises FencedError (or the error the
        database reported for this run) if it could not be recorded."""
        outcome = _Outcome(workflow_id, epoch, status, output, error)
        with self._cond:
            if self._closed:
                raise errors.PgDurableError("the App is closed")
            self._pending.append(outcome)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._flush_forever, name="pgdurable-completions", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        outcome.done.wait()
        if outcome.failure is not None:
            raise outcome.failure

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _flush_forever(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return  # closed and drained
                batch = self._pending[:MAX_BATCH]
                del self._pending[:MAX_BATCH]
            self._flush(batch)

    def _flush(self, batch: list[_Outcome]) -> None:
        params = {"ids": [o.workflow_id for o in batch], "epochs": [o.epoch for o in batch],
                  "statuses": [o.status for o in batch],
                  "outputs": [jsonb(o.output) for o in batch],
                  "errors": [jsonb(o.error) for o in batch]}
        try:
            for attempt in range(5):
                try:
                    rows = self.db.fetch_all("finish_many", params)
                    break
                except (psycopg.errors.DeadlockDetected,
                        psycopg.errors.SerializationFailure):
                    if attempt == 4:
                        raise
                    time.sleep(0.01 * 2**attempt)  # the transaction rolled back: redo it
        except Exception as exc:  # the whole batch failed (e.g. database gone for long)
            for outcome in batch:
                outcome.failure = exc
                outcome.done.set()
            return
        failed = {row["id"]: row for row in rows}
        for outcome in batch:
            row = failed.get(outcome.workflow_id)
            if row is not None:
                outcome.failure = errors.from_sqlstate(row["sqlstate"], row["message"])
            outcome.done.set()
