"""The queue worker: claim runs in batches, execute them, wake on NOTIFY, shut down gracefully.

Flow control (concurrency, rate limits, partitions, priorities, pause) is decided by the SQL
claim function; the worker only asks for as many runs as it has free slots, for the workflow
names it registers. Leases are renewed by the App's one-statement-per-process heartbeat.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg

from pgdurable.core.errors import (
    ConfigurationError,
    FencedError,
    InvalidArgument,
    RegistrationError,
    WorkflowNotFound,
)
from pgdurable.runtime.executor import Outcome
from pgdurable.store.database import connect
from pgdurable.store.sql import query

if TYPE_CHECKING:
    from pgdurable.api.app import App

log = logging.getLogger("pgdurable.worker")


@dataclass
class _Claimed:
    workflow_id: str
    epoch: int
    future: Future[Outcome]


class Worker:
    """Serves queues with up to `concurrency` runs at a time in this process.

    `queues`: names to serve (default: every queue the App declares, plus 'default').
    `poll_interval`: seconds between claims when idle, the fallback behind NOTIFY wake-ups.
    `exit_when_idle`: return as soon as nothing is claimable and nothing is running.
    `grace_seconds`: on stop, how long to let running executions finish before releasing them
    back to their queues.
    """

    def __init__(
        self,
        app: App,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int = 16,
        poll_interval: float = 1.0,
        exit_when_idle: bool = False,
        grace_seconds: float = 30.0,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidArgument(f"concurrency must be an integer >= 1, not {concurrency!r}")
        if not poll_interval > 0:
            raise InvalidArgument(f"poll_interval must be > 0, not {poll_interval!r}")
        if not grace_seconds >= 0:
            raise InvalidArgument(f"grace_seconds must be >= 0, not {grace_seconds!r}")
        if not app.registry.workflows:
            raise RegistrationError("the App registers no workflows: nothing to run")
        self.app = app
        self.queues = list(queues) if queues else sorted({"default", *app.registry.queues})
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.exit_when_idle = exit_when_idle
        self.grace_seconds = grace_seconds
        self._names = sorted(app.registry.workflows)
        self._claimed: dict[str, _Claimed] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self.started = 0  # runs claimed by this worker
        self.released = 0  # runs given back at shutdown

    def stop(self) -> None:
        """Stop claiming; running executions get `grace_seconds` to finish. Thread-safe and
        safe to call from a signal handler."""
        self._stopping.set()
        self._wake.set()

    def run(self) -> None:
        """Serve until `stop()` (or until idle with `exit_when_idle`)."""
        app = self.app
        app.db  # connect, check the schema, declare the queues  # noqa: B018
        executor = app.executor
        # executions + claim + heartbeat + the group commit's connection
        app.db.ensure_pool_size(self.concurrency + 3)
        if executor.max_threads < self.concurrency:
            raise InvalidArgument(
                f"concurrency {self.concurrency} exceeds the App's max_threads "
                f"{executor.max_threads}"
            )
        unknown = self._unknown_queues()
        if unknown:
            raise InvalidArgument(f"unknown queue(s): {', '.join(unknown)}")
        listener = threading.Thread(target=self._listen, name="pgdurable-listen", daemon=True)
        listener.start()
        try:
            self._serve()
        finally:
            self._stopping.set()  # also ends the listener when we return on idle
            listener.join(timeout=5)

    def _serve(self) -> None:
        log.info("worker %s serving %s with concurrency %d", self.app.executor.worker_id,
                 ", ".join(self.queues), self.concurrency)
        # Claim in batches: with work in hand, wait until a quarter of the slots are free, so
        # one claim round trip serves several runs instead of one per finished run.
        batch = max(1, self.concurrency // 4)
        next_sweep = 0.0
        while not self._stopping.is_set():
            self._wake.clear()  # before claiming, so a wake-up during the claim is kept
            if time.monotonic() >= next_sweep:
                self._requeue_expired()
                next_sweep = time.monotonic() + self.app.heartbeat_seconds
            active = self._active()
            free = self.concurrency - active
            if free < batch and active > 0:
                self._wake.wait(self.poll_interval)
                continue
            idle_before_claim = active == 0  # read first: a run ending during the claim may
            claimed = self._claim(free)      # have put a retry back on the queue
            if claimed and claimed == free:
                continue  # more may be waiting: claim again as soon as slots free up
            if self.exit_when_idle and claimed == 0 and idle_before_claim:
                break
            self._wake.wait(self.poll_interval)
        self._drain()

    # -- internals -------------------------------------------------------------------------

    def _unknown_queues(self) -> list[str]:
        rows = self.app.db.fetch_all("existing_queues", {"names": self.queues})
        known = {row["name"] for row in rows}
        return [q for q in self.queues if q not in known]

    def _requeue_expired(self) -> None:
        """Put runs of our queues whose owner's lease expired back on the ready list, so they
        are claimed (with a new epoch) like any other. Cheap and bounded; every worker does it
        once per heartbeat period, so a dead worker's runs come back within about one lease."""
        try:
            row = self.app.db.fetch_one("requeue_expired", {"queues": self.queues, "limit": 100})
        except (psycopg.OperationalError, ConfigurationError, OSError) as exc:
            log.warning("requeue of expired runs failed (%s)", exc)
            return
        if row and row["requeued"]:
            log.info("%d runs whose lease expired were requeued or dead-lettered",
                     row["requeued"])
            self._wake.set()

    def _active(self) -> int:
        with self._lock:
            return len(self._claimed)

    def _claim(self, free: int) -> int:
        try:
            rows = self.app.db.fetch_all(
                "claim",
                {"worker": self.app.executor.worker_id, "queues": self.queues, "max": free,
                 "lease_seconds": self.app.lease_seconds, "names": self._names},
            )
        except (psycopg.OperationalError, ConfigurationError, OSError) as exc:
            log.warning("claim failed (%s); retrying", exc)
            time.sleep(min(self.poll_interval, 1.0))
            return 0
        for row in rows:
            wf = self.app.registry.workflows[row["name"]]
            future = self.app.executor.submit(
                wf, row["id"], row["epoch"], row["inputs"], has_steps=row["has_steps"],
                suspendable=True,
            )
            with self._lock:
                self._claimed[row["id"]] = _Claimed(row["id"], row["epoch"], future)
            future.add_done_callback(functools.partial(self._done, row["id"]))
        self.started += len(rows)
        return len(rows)

    def _done(self, workflow_id: str, _future: Future[Outcome]) -> None:
        with self._lock:
            self._claimed.pop(workflow_id, None)
        self._wake.set()

    def _drain(self) -> None:
        """Let running executions finish within the grace period; release the rest."""
        started = time.monotonic()
        # grace_seconds is re-read: a second signal sets it to 0 to release at once.
        while self._active() and time.monotonic() < started + self.grace_seconds:
            time.sleep(0.05)
        with self._lock:
            left = list(self._claimed.values())
        for claimed in left:
            try:
                self.app.db.fetch_one("release",
                                      {"id": claimed.workflow_id, "epoch": claimed.epoch})
                log.info("released %s back to its queue", claimed.workflow_id)
            except (FencedError, WorkflowNotFound):
                pass  # finished, cancelled or taken over meanwhile
        self.released = len(left)

    def _listen(self) -> None:
        """Set the wake event on every NOTIFY for one of our queues. Reconnects on failure;
        polling covers any notification lost meanwhile."""
        wanted = set(self.queues)
        delay = 0.1
        while not self._stopping.is_set():
            try:
                with connect(self.app.db.dsn) as conn:
                    conn.execute(query("listen"))
                    delay = 0.1
                    self._wake.set()  # anything enqueued while we were not listening
                    while not self._stopping.is_set():
                        for note in conn.notifies(timeout=1.0):
                            if note.payload in wanted:
                                self._wake.set()
            except Exception as exc:
                log.warning("listener lost its connection (%s); reconnecting", exc)
                self._stopping.wait(delay)
                delay = min(delay * 2, 5.0)

