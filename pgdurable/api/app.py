"""`App`: what a pgdurable application is: where its database is, what it registers, its
lifecycle, and starting and continuing runs. Reading and steering runs is the admin surface
(`app.admin`, api/admin.py); the App keeps its methods under their familiar names."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Concatenate, ParamSpec, TypeVar, overload

import psycopg

from pgdurable.api import children, starting
from pgdurable.api.admin import Admin, AdminShortcuts
from pgdurable.api.decorators import StepFunction, TransactionFunction, WorkflowFunction
from pgdurable.api.handles import WorkflowHandle
from pgdurable.api.queues import Queue, RateLimit
from pgdurable.api.schedules import Schedule, declare_all
from pgdurable.core.definitions import Registry, RetryPolicy, check_timeout, default_name
from pgdurable.core.errors import InvalidArgument, RegistrationError, SerializationError
from pgdurable.dev.config import resolve_dsn
from pgdurable.runtime.bundle import Runtime
from pgdurable.runtime.executor import Executor
from pgdurable.runtime.recovery import RecoveryDaemon, RecoverySettings
from pgdurable.store import migrate
from pgdurable.store.calls import Store
from pgdurable.store.completions import Completions
from pgdurable.store.database import Database

P = ParamSpec("P")
R = TypeVar("R")

__all__ = ["App", "AppRegistry", "default_name"]


@dataclass
class AppRegistry(Registry[WorkflowFunction[Any, Any],
                           StepFunction[Any, Any] | TransactionFunction[Any, Any]]):
    """The App's workflows and steps, and the queues and schedules it declares."""

    queues: dict[str, Queue] = field(default_factory=dict)
    schedules: dict[str, Schedule] = field(default_factory=dict)


@dataclass(frozen=True)
class _Connected:
    """What exists once the App has connected (and is gone again after `close`)."""

    runtime: Runtime
    executor: Executor


class App(AdminShortcuts):
    """A pgdurable application: where the database is, and what it can run.

    `dsn`: a libpq connection string. Default: PGDURABLE_DSN, else libpq's PG* variables, else
    the embedded development server. Nothing connects until the first run or query.
    `lease_seconds`: how long a run stays owned without a heartbeat (a crashed process's runs can
    be taken over after this). `heartbeat_seconds`: renewal period, default a third of the lease.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        lease_seconds: float = 30.0,
        heartbeat_seconds: float | None = None,
        pool_size: int = 10,
        max_threads: int = 64,
        auto_migrate: bool = False,
    ) -> None:
        if not math.isfinite(lease_seconds) or lease_seconds <= 0:
            raise InvalidArgument(f"lease_seconds must be > 0, not {lease_seconds!r}")
        heartbeat = lease_seconds / 3 if heartbeat_seconds is None else heartbeat_seconds
        if not math.isfinite(heartbeat) or not 0 < heartbeat < lease_seconds:
            raise InvalidArgument(
                f"heartbeat_seconds must be > 0 and < lease_seconds, not {heartbeat!r}"
            )
        if pool_size < 1 or max_threads < 1:
            raise InvalidArgument("pool_size and max_threads must be >= 1")
        self._dsn = dsn
        self.lease_seconds = float(lease_seconds)
        self.heartbeat_seconds = float(heartbeat)
        self.auto_migrate = auto_migrate
        self.registry = AppRegistry()
        self._pool_size = pool_size
        self._max_threads = max_threads
        self._connected: _Connected | None = None
        self._open_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    def use_dsn(self, dsn: str) -> None:
        """Point the App at another database (e.g. from a CLI option), before it connects."""
        if self._connected is not None:
            raise InvalidArgument("use_dsn() must be called before the App connects")
        self._dsn = dsn

    @property
    def connected(self) -> bool:
        return self._connected is not None

    @property
    def runtime(self) -> Runtime:
        """What executions are given (pool, SQL calls, group commit, lease settings); the App
        connects (and checks the schema) on first use."""
        return self._connect().runtime

    @property
    def db(self) -> Database:
        """The connection pool."""
        return self.runtime.db

    @property
    def store(self) -> Store:
        """The SQL calls, on pooled connections."""
        return self.runtime.store

    @property
    def completions(self) -> Completions:
        """Group commit of step checkpoints and run endings (store/completions.py)."""
        return self.runtime.completions

    @property
    def executor(self) -> Executor:
        """The threads running this process's executions."""
        return self._connect().executor

    @property
    def admin(self) -> Admin:
        """Reading and steering runs, queues and schedules (api/admin.py)."""
        return Admin(self.store)

    def _connect(self) -> _Connected:
        connected = self._connected
        if connected is None:
            with self._open_lock:
                connected = self._connected
                if connected is None:
                    connected = self._connected = self._open()
        return connected

    def _open(self) -> _Connected:
        db = Database(resolve_dsn(self._dsn), max_size=self._pool_size)
        db.open()
        try:
            with db.connection() as conn:
                if self.auto_migrate:
                    migrate.migrate(conn)
                migrate.check_schema(conn)
                for queue in self.registry.queues.values():
                    queue.declare(conn=conn)
                declare_all(self.registry.schedules.values(), conn)
        except BaseException:
            db.close()
            raise
        runtime = Runtime(db=db, store=Store(db), completions=Completions(db),
                          lease_seconds=self.lease_seconds,
                          heartbeat_seconds=self.heartbeat_seconds)
        return _Connected(runtime, Executor(runtime, max_threads=self._max_threads))

    def close(self, wait: bool = True) -> None:
        """Stop local executions' threads (waiting for them with `wait`) and close the pool."""
        connected, self._connected = self._connected, None
        if connected is not None:
            connected.executor.shutdown(wait=wait)
            connected.runtime.completions.close()
            connected.runtime.db.close()

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def recovery(self, settings: RecoverySettings | None = None) -> RecoveryDaemon:
        """A recovery daemon for this App's database, to run in this process:
        `app.recovery().start()` serves in a background thread (stop it with `.stop()`);
        `.run()` serves in the calling thread. Several may run anywhere; one leads."""
        return RecoveryDaemon(self.db.dsn, settings)

    # -- registration ----------------------------------------------------------------------

    def workflow(
        self, *, name: str | None = None, max_attempts: int = 1, retry_backoff: float = 1.0,
        timeout: float | timedelta | None = None,
    ) -> Callable[[Callable[P, R]], WorkflowFunction[P, R]]:
        """Register a durable workflow. Its steps are checkpointed; after a crash, a new
        execution replays recorded steps and continues from the first unrecorded one.

        `max_attempts`: executions a queued run gets when it fails (retries are scheduled in SQL
        after `retry_backoff * 2^(n-1)` seconds, keeping checkpoints); then it ends `failed`.
        `timeout`: seconds (or timedelta) for the whole run from its creation, waits included;
        then the recovery sweep cancels it with its subtree (WorkflowTimeout). Per-call
        `timeout=` on `start`/`enqueue` overrides it.
        """
        seconds = check_timeout("timeout", timeout)
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) \
                or max_attempts < 1:
            raise InvalidArgument(f"max_attempts must be an integer >= 1, not {max_attempts!r}")
        if not math.isfinite(retry_backoff) or retry_backoff < 0:
            raise InvalidArgument(f"retry_backoff must be >= 0, not {retry_backoff!r}")

        def register(fn: Callable[P, R]) -> WorkflowFunction[P, R]:
            wf_name = name or default_name(fn)
            self.registry.claim_name(wf_name, "workflow", fn)
            wf = WorkflowFunction(self, fn, wf_name, max_attempts=max_attempts,
                                  retry_backoff=retry_backoff, timeout=seconds)
            self.registry.workflows[wf_name] = wf
            return wf

        return register

    def step(
        self,
        *,
        name: str | None = None,
        retries: int = 0,
        interval: float = 1.0,
        backoff: float = 2.0,
        max_interval: float = 60.0,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
        at_most_once: bool = False,
        timeout: float | timedelta | None = None,
    ) -> Callable[[Callable[P, R]], StepFunction[P, R]]:
        """Register a step: its output is recorded once and replayed, never re-run.

        The body runs at least once (a crash after it ran but before its checkpoint committed
        runs it again). `at_most_once=True` commits an intent first and never runs the body
        again after such a crash: the workflow sees StepOutcomeUnknown instead. `timeout`:
        seconds per attempt; an overrunning attempt fails with StepTimeout (retried per the
        policy) and its body is abandoned, running to its end in a helper thread.
        """
        policy = RetryPolicy(retries, interval, backoff, max_interval, tuple(retry_on))
        seconds = check_timeout("timeout", timeout)

        def register(fn: Callable[P, R]) -> StepFunction[P, R]:
            step_name = name or default_name(fn)
            self.registry.claim_name(step_name, "step", fn)
            step = StepFunction(self, fn, step_name, policy, at_most_once, seconds)
            self.registry.steps[step_name] = step
            return step

        return register

    def transaction(
        self,
        *,
        name: str | None = None,
        retries: int = 0,
        interval: float = 1.0,
        backoff: float = 2.0,
        max_interval: float = 60.0,
        retry_on: tuple[type[BaseException], ...] = (Exception,),
    ) -> Callable[
        [Callable[Concatenate[psycopg.Connection[Any], P], R]], TransactionFunction[P, R]
    ]:
        """Register a transaction step. The function's first parameter is a psycopg connection
        in an open transaction; its writes and the step's checkpoint commit together, so its
        effect on the database happens exactly once."""
        policy = RetryPolicy(retries, interval, backoff, max_interval, tuple(retry_on))

        def register(
            fn: Callable[Concatenate[psycopg.Connection[Any], P], R],
        ) -> TransactionFunction[P, R]:
            step_name = name or default_name(fn)
            self.registry.claim_name(step_name, "transaction", fn)
            step = TransactionFunction(self, fn, step_name, policy)
            self.registry.steps[step_name] = step
            return step

        return register

    def queue(
        self,
        name: str,
        *,
        concurrency: int | None = None,
        worker_concurrency: int | None = None,
        rate_limit: RateLimit | None = None,
        partition_concurrency: int | None = None,
        max_recoveries: int | None = None,
    ) -> Queue:
        """Declare a queue and its limits (None = unlimited). Limits are stored in the
        database when this App connects, so all workers enforce the same ones.
        `max_recoveries`: lease expiries after which a run ends failed (None: keep the stored
        budget, 10 for a new queue)."""
        if name in self.registry.queues:
            raise RegistrationError(f"queue {name!r} is already declared")
        queue = Queue(self, name, concurrency=concurrency, worker_concurrency=worker_concurrency,
                      rate_limit=rate_limit, partition_concurrency=partition_concurrency,
                      max_recoveries=max_recoveries)
        self.registry.queues[name] = queue
        if self.connected:
            queue.declare()
        return queue

    def schedule(
        self,
        name: str,
        cron: str,
        fn: WorkflowFunction[Any, Any] | str,
        *args: Any,
        queue: str = "default",
        timezone: str = "UTC",
        catch_up: bool = False,
        **kwargs: Any,
    ) -> Schedule:
        """Start `fn(*args, **kwargs)` on `queue` at every tick of the cron expression (in
        `timezone`). Each tick starts exactly one run (id `schedule:<name>:<tick>`), however
        many recovery daemons run. Ticks missed while no daemon ran are skipped, unless
        `catch_up` (then they fire, at most one day back). Stored when the App connects; the
        `pgdurable recover` daemon fires them."""
        if name in self.registry.schedules:
            raise RegistrationError(f"schedule {name!r} is already declared")
        if not isinstance(fn, str | WorkflowFunction):
            raise RegistrationError(
                f"schedule {name!r}: {fn!r} is not a workflow registered with @app.workflow()"
            )
        schedule = Schedule.build(name, cron, self.resolve(fn), args, kwargs, queue=queue,
                                  timezone=timezone, catch_up=catch_up)
        if self.connected:  # store it first, keep it only if that worked
            schedule.declare(self.store)
        self.registry.schedules[name] = schedule
        return schedule

    def scheduled(
        self, cron: str, *, name: str | None = None, queue: str = "default",
        timezone: str = "UTC", catch_up: bool = False,
    ) -> Callable[[WorkflowFunction[P, R]], WorkflowFunction[P, R]]:
        """Decorator form of `schedule` for a workflow without arguments:
        `@app.scheduled("*/5 * * * *")` above `@app.workflow()`."""
        from pgdurable.core import cron as cron_module

        cron_module.parse(cron)  # a bad expression fails at declaration, before decoration

        def register(wf: WorkflowFunction[P, R]) -> WorkflowFunction[P, R]:
            if not isinstance(wf, WorkflowFunction):
                raise RegistrationError(
                    "@app.scheduled(...) goes above @app.workflow(): it needs a workflow"
                )
            self.schedule(name or wf.name, cron, wf, queue=queue, timezone=timezone,
                          catch_up=catch_up)
            return wf

        return register

    # -- starting runs ---------------------------------------------------------------------

    @overload
    def start(
        self,
        fn: WorkflowFunction[P, R],
        *args: Any,
        workflow_id: str | None = None,
        conn: psycopg.Connection[Any] | None = None,
        timeout: float | timedelta | None = None,
        **kwargs: Any,
    ) -> WorkflowHandle[R]: ...

    @overload
    def start(
        self,
        fn: str,
        *args: Any,
        workflow_id: str | None = None,
        conn: psycopg.Connection[Any] | None = None,
        timeout: float | timedelta | None = None,
        **kwargs: Any,
    ) -> WorkflowHandle[Any]: ...

    def start(
        self,
        fn: WorkflowFunction[Any, Any] | str,
        *args: Any,
        workflow_id: str | None = None,
        conn: psycopg.Connection[Any] | None = None,
        timeout: float | timedelta | None = None,
        **kwargs: Any,
    ) -> WorkflowHandle[Any]:
        """Start a run of a workflow in this process and return its handle.

        `workflow_id` is an idempotency key: if a run with that id exists, its handle is
        returned and nothing new runs (if its owner's lease expired, this process takes it
        over and continues it from its checkpoints). With `conn`, the run is created inside the
        caller's transaction and executes only once that transaction commits; on rollback it
        never existed. A run that exists and is pending is left to its queue. `timeout`: as
        `@app.workflow(timeout=)`, for this run (ignored when the run exists).
        """
        return self.start_run(self.resolve(fn), args, kwargs, workflow_id=workflow_id, conn=conn,
                              timeout=timeout)

    def start_run(
        self,
        wf: WorkflowFunction[Any, R],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        workflow_id: str | None = None,
        conn: psycopg.Connection[Any] | None = None,
        timeout: float | timedelta | None = None,
    ) -> WorkflowHandle[R]:
        """`start` with the workflow's arguments passed as a tuple and a dict (no clash with
        the `workflow_id` / `conn` / `timeout` keywords)."""
        if children.in_workflow():  # a child of the running workflow
            return children.start_child(self, wf, args, kwargs, workflow_id, conn, timeout)
        return starting.start_run(self, wf, args, kwargs, workflow_id=workflow_id, conn=conn,
                                  timeout=timeout)

    def resolve(self, fn: WorkflowFunction[Any, R] | str) -> WorkflowFunction[Any, R]:
        """The registered workflow for a decorated function or its name."""
        if isinstance(fn, WorkflowFunction):
            if fn.app is not self:
                raise RegistrationError(f"workflow {fn.name!r} belongs to another App")
            return fn
        if isinstance(fn, str):
            wf = self.registry.workflows.get(fn)
            if wf is None:
                raise RegistrationError(
                    f"no workflow named {fn!r} is registered; known: "
                    f"{', '.join(sorted(self.registry.workflows)) or 'none'}"
                )
            return wf
        raise SerializationError(
            f"app.start() needs a function decorated with @app.workflow() or its name, "
            f"not {fn!r}"
        )

    # -- continuing runs -------------------------------------------------------------------

    def retrieve(self, workflow_id: str) -> WorkflowHandle[Any]:
        """A handle on an existing run (WorkflowNotFound if there is none)."""
        handle: WorkflowHandle[Any] = WorkflowHandle(self, workflow_id)
        handle.info()
        return handle

    def resume(self, workflow_id: str) -> WorkflowHandle[Any]:
        """Continue a run in this process from its checkpoints: one whose owner's lease expired,
        or one that failed or was cancelled. A run with a live lease is left to its owner; a
        succeeded run is left alone. Returns its handle either way."""
        name = self.get_workflow(workflow_id).name
        wf = self.registry.workflows.get(name)
        if wf is None:  # checked before any state changes
            raise RegistrationError(
                f"workflow {workflow_id!r} runs {name!r}, which this App does not register; "
                "resume it from a process that imports it, or `pgdurable workflows resume` "
                "it without --app to put it back on its queue"
            )
        execution = self.store.resume(workflow_id, self.executor.worker_id, self.lease_seconds)
        if execution is not None:
            self.executor.submit(wf, execution)
        return self.retrieve(workflow_id)

    def take_over(self, workflow_id: str) -> bool:
        """Continue a run here if its owner's lease expired (or it is pending). Returns whether
        this process took it; the SQL decides atomically, so racing processes cannot both."""
        execution = self.store.acquire(workflow_id, self.executor.worker_id, self.lease_seconds)
        if execution is None:
            return False
        self.executor.submit(self.resolve(execution.name), execution)
        return True

    def cancel(self, workflow_id: str, cascade: bool = True) -> str:
        """`admin.cancel`, and local executions of the cancelled runs start no further step."""
        return starting.cancel(self, workflow_id, cascade)
