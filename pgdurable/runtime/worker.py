"""The queue worker loop: claim runs in batches, execute them, wake on NOTIFY, drain on stop.

Flow control (concurrency, rate limits, partitions, priorities, pause) is decided by the SQL
claim function; the loop only asks for as many runs as it has free slots, for the workflow
names it can run. Leases are renewed by the executor's one-statement-per-process heartbeat.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import psycopg

from pgdurable.core.definitions import WorkflowDefinition
from pgdurable.core.errors import ConfigurationError, FencedError, WorkflowNotFound
from pgdurable.runtime.bundle import Runtime
from pgdurable.runtime.executor import Executor, Outcome
from pgdurable.runtime.listener import Listener

log = logging.getLogger("pgdurable.worker")


@dataclass
class _Claimed:
    workflow_id: str
    epoch: int
    future: Future[Outcome]


class WorkerLoop:
    """Serves `queues` with up to `concurrency` runs at a time (see api/worker.py for the
    options). Thread-safe `stop()`; counters `started` and `released` once it returns."""

    def __init__(self, *, queues: Sequence[str], concurrency: int, poll_interval: float,
                 exit_when_idle: bool, grace_seconds: float) -> None:
        self.queues = list(queues)
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.exit_when_idle = exit_when_idle
        self.grace_seconds = grace_seconds
        self._claimed: dict[str, _Claimed] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self.started = 0  # runs claimed by this worker
        self.released = 0  # runs given back at shutdown

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """Stop claiming; running executions get `grace_seconds` to finish. Thread-safe and
        safe to call from a signal handler."""
        self._stopping.set()
        self._wake.set()

    def serve(self, runtime: Runtime, executor: Executor,
              workflows: Mapping[str, WorkflowDefinition]) -> None:
        """Serve until `stop()` (or until idle with `exit_when_idle`)."""
        self._runtime, self._executor, self._workflows = runtime, executor, workflows
        listener = Listener(runtime.db.dsn, self.queues, self._wake.set)
        listener.start()
        try:
            self._serve()
        finally:
            self._stopping.set()  # also when we return on idle
            listener.stop()

    def _serve(self) -> None:
        log.info("worker %s serving %s with concurrency %d", self._executor.worker_id,
                 ", ".join(self.queues), self.concurrency)
        # Claim in batches: with work in hand, wait until a quarter of the slots are free, so
        # one claim round trip serves several runs instead of one per finished run.
        batch = max(1, self.concurrency // 4)
        next_sweep = 0.0
        while not self._stopping.is_set():
            self._wake.clear()  # before claiming, so a wake-up during the claim is kept
            if time.monotonic() >= next_sweep:
                self._requeue_expired()
                next_sweep = time.monotonic() + self._runtime.heartbeat_seconds
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

    def _requeue_expired(self) -> None:
        """Put runs of our queues whose owner's lease expired back on the ready list, so they
        are claimed (with a new epoch) like any other. Cheap and bounded; every worker does it
        once per heartbeat period, so a dead worker's runs come back within about one lease."""
        try:
            requeued = self._runtime.store.requeue_expired(self.queues, 100)
        except (psycopg.OperationalError, ConfigurationError, OSError) as exc:
            log.warning("requeue of expired runs failed (%s)", exc)
            return
        if requeued:
            log.info("%d runs whose lease expired were requeued or dead-lettered", requeued)
            self._wake.set()

    def _active(self) -> int:
        with self._lock:
            return len(self._claimed)

    def _claim(self, free: int) -> int:
        try:
            claimed = self._runtime.store.claim(self._executor.worker_id, self.queues, free,
                                                self._runtime.lease_seconds,
                                                sorted(self._workflows))
        except (psycopg.OperationalError, ConfigurationError, OSError) as exc:
            log.warning("claim failed (%s); retrying", exc)
            time.sleep(min(self.poll_interval, 1.0))
            return 0
        for execution in claimed:
            wid = execution.workflow_id
            future = self._executor.submit(self._workflows[execution.name], execution,
                                           suspendable=True)
            with self._lock:
                self._claimed[wid] = _Claimed(wid, execution.epoch, future)
            future.add_done_callback(functools.partial(self._done, wid))
        self.started += len(claimed)
        return len(claimed)

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
                self._runtime.store.release(claimed.workflow_id, claimed.epoch)
                log.info("released %s back to its queue", claimed.workflow_id)
            except (FencedError, WorkflowNotFound):
                pass  # finished, cancelled or taken over meanwhile
        self.released = len(left)
