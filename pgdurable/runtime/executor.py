"""Running workflow executions in this process: threads, leases, heartbeats, finishing.

An execution owns its run through a lease (`owner`, `lease_until`) and a fencing epoch. One
heartbeat statement per process renews the leases of every run it holds. When the epoch turns
out stale (another worker took the run over), the execution stops quietly: the new owner
carries on from the checkpoints. When the run was cancelled (or timed out) under it, the
heartbeat (or a waiting handle) learns it and flags the execution's context: no further step
body starts, and a step body already running runs to its end but its checkpoint is refused.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from pgdurable.core.definitions import WorkflowDefinition
from pgdurable.core.errors import DatabaseUnavailable, FencedError, WorkflowNotFound
from pgdurable.core.records import Execution
from pgdurable.core.serde import as_stored, error_record
from pgdurable.runtime import context
from pgdurable.runtime.bundle import Runtime
from pgdurable.runtime.context import Stopped, WorkflowContext
from pgdurable.runtime.suspension import Suspended

log = logging.getLogger("pgdurable.executor")

# What an execution that ran here committed: ("succeeded", workflow name, output as stored), or
# None (it ended otherwise, or stopped). A handle on a run executed in this process uses it
# instead of reading the run back.
Outcome = tuple[str, str, Any] | None


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Executor:
    """Runs the executions this process owns, each in a thread of its own pool."""

    def __init__(self, runtime: Runtime, *, max_threads: int) -> None:
        self.runtime = runtime
        self.worker_id = new_worker_id()
        self.max_threads = max_threads
        self._pool = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="pgdurable")
        self._running: dict[str, Future[Outcome]] = {}
        self._stops: dict[str, threading.Event] = {}  # set: the run is no longer ours
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def submit(
        self,
        wf: WorkflowDefinition,
        execution: Execution,
        *,
        after_xact: str | None = None,
        suspendable: bool = False,
    ) -> Future[Outcome]:
        """Run an execution in the background. With `after_xact`, wait until that transaction
        (the caller's, which created the run) commits; if it rolls back, do nothing.
        `suspendable` (a worker's run): a long `pgdurable.sleep` suspends the run instead of
        waiting here."""
        self._ensure_heartbeat()
        workflow_id = execution.workflow_id
        stopped = threading.Event()
        future = self._pool.submit(self._run, wf, execution, after_xact, suspendable, stopped)
        with self._lock:
            self._running[workflow_id] = future
            self._stops[workflow_id] = stopped
        future.add_done_callback(lambda _: self._forget(workflow_id, future))
        return future

    def local(self, workflow_id: str) -> Future[Outcome] | None:
        with self._lock:
            return self._running.get(workflow_id)

    def stop_local(self, workflow_id: str) -> None:
        """The run is no longer this process's (a waiter saw it cancelled): its execution
        starts no further step body."""
        with self._lock:
            stopped = self._stops.get(workflow_id)
        if stopped is not None:
            stopped.set()

    def check_now(self) -> None:
        """One heartbeat now: renew the leases and stop the executions whose runs are no longer
        ours (after a cancel issued from this process, so they stop at once)."""
        with self._lock:
            ids = list(self._running)
        if ids:
            self._renew(ids)

    def shutdown(self, wait: bool = True) -> None:
        self._stop.set()
        self._pool.shutdown(wait=wait, cancel_futures=not wait)
        if self._heartbeat is not None and wait:
            self._heartbeat.join(timeout=5)

    # -- internals -------------------------------------------------------------------------

    def _forget(self, workflow_id: str, future: Future[Outcome]) -> None:
        with self._lock:
            if self._running.get(workflow_id) is future:
                del self._running[workflow_id]
                self._stops.pop(workflow_id, None)

    def _run(self, wf: WorkflowDefinition, execution: Execution, after_xact: str | None,
             suspendable: bool, stopped: threading.Event) -> Outcome:
        workflow_id = execution.workflow_id
        if after_xact is not None and not self._wait_for_commit(after_xact):
            log.info("workflow %s: the transaction that started it rolled back", workflow_id)
            return None
        try:
            return execute(self.runtime, wf, execution, suspendable=suspendable, stopped=stopped)
        except Stopped as exc:
            log.info("%s", exc)  # cancelled, timed out or taken over: nothing of ours to record
        except FencedError as exc:
            if stopped.is_set() or "status cancelled" in str(exc):
                log.info("workflow %s: cancelled under this execution, which stops: %s",
                         workflow_id, exc)
            else:
                log.warning("workflow %s: this execution stopped: %s", workflow_id, exc)
        except (WorkflowNotFound, DatabaseUnavailable) as exc:
            # Nothing recorded: if the run is still ours its lease expires and it is taken over.
            log.warning("workflow %s: this execution stopped: %s", workflow_id, exc)
        except Exception:
            # The run stays `running`; no longer renewed, it is taken over once its lease
            # expires.
            log.exception("workflow %s: execution stopped by an unexpected error", workflow_id)
        return None

    def _wait_for_commit(self, xact_id: str) -> bool:
        """Poll the creating transaction's fate. True once committed, False if rolled back."""
        delay = 0.001
        while not self._stop.is_set():
            status = self.runtime.store.xact_status(xact_id)
            if status == "committed":
                return True
            if status != "in progress":
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        return False

    def _ensure_heartbeat(self) -> None:
        with self._lock:
            if self._heartbeat is None:
                self._heartbeat = threading.Thread(
                    target=self._beat, name="pgdurable-heartbeat", daemon=True
                )
                self._heartbeat.start()

    def _beat(self) -> None:
        period = self.runtime.heartbeat_seconds
        while not self._stop.wait(period):
            with self._lock:
                ids = list(self._running)
            if not ids:
                continue
            try:
                self._renew(ids)
            except Exception as exc:  # keep beating: the database may come back
                log.warning("heartbeat failed: %s", exc)

    def _renew(self, ids: list[str]) -> None:
        _, lost = self.runtime.store.heartbeat(self.worker_id, ids, self.runtime.lease_seconds)
        if lost:
            with self._lock:
                stops = [self._stops.get(i) for i in lost]
            for stopped in stops:
                if stopped is not None:
                    stopped.set()


def execute(
    runtime: Runtime, wf: WorkflowDefinition, execution: Execution, *, suspendable: bool = False,
    stopped: threading.Event | None = None,
) -> Outcome:
    """Run (or replay) one execution of a workflow to the end and record how it ended, or
    until it suspends itself (a long durable sleep): the run is then back on its queue.

    Raises FencedError if the run was taken over meanwhile; nothing is then recorded.
    Returns ("succeeded", name, output as stored) once a success is committed, else None.
    """
    workflow_id, epoch = execution.workflow_id, execution.epoch
    recorded = runtime.store.load_steps(workflow_id, epoch) if execution.has_steps else {}
    ctx = WorkflowContext(runtime=runtime, workflow_id=workflow_id, epoch=epoch,
                          recorded=recorded, suspendable=suspendable,
                          stopped=stopped if stopped is not None else threading.Event())
    token = context.activate(ctx)
    try:
        try:
            args, kwargs = wf.signature.decode_args(execution.inputs)
            output = wf.signature.encode_result(wf.fn(*args, **kwargs))
        except Suspended as suspended:
            log.debug("workflow %s: %s", workflow_id, suspended)
            return None  # pending until its wake-up time; a worker continues it then
        except (FencedError, WorkflowNotFound, DatabaseUnavailable, Stopped):
            # Taken over, cancelled or deleted under us, or the database stayed out of reach:
            # nothing of ours to record (the run's outcome is not this execution's to decide).
            raise
        except Exception as exc:
            _finish(ctx, "failed", None, error_record(exc))
            return None
        _finish(ctx, "succeeded", output, None)
        return ("succeeded", wf.name, as_stored(output))
    finally:
        context.deactivate(token)


def _finish(ctx: WorkflowContext, status: str, output: Any, error: Any) -> None:
    ctx.runtime.completions.finish(ctx.workflow_id, ctx.epoch, status, output, error)
