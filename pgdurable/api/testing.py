"""`pgdurable.testing`: a pytest plugin and helpers for testing code built on pgdurable.

Load it with `pytest_plugins = ["pgdurable.testing"]` (installing pgdurable also registers it
with pytest under that name). Fixtures:

- `pgdurable_server_dsn` (session): the server test databases live on: `PGDURABLE_TEST_DSN`,
  else the embedded PostgreSQL with its data under `<rootdir>/.pgdurable/test/pg`.
- `pgdurable_template` (session): a database migrated once per session, used as a template;
  override `pgdurable_template_setup` to add your own schema to it.
- `pgdurable_dsn`: a fresh database cloned from the template for each test, dropped after it.
- `pgdurable_bind`: `pgdurable_bind(app)` points an App (yours, with its workflows) at the
  test's database and closes it after the test; `pgdurable_app` is a new bound App.
- `pgdurable_clock`: the fake clock of the test's database (`pgdurable.now`), see `Clock`.

`crash_at_step` runs a workflow until a step, stops it there as a crash would, and continues it
from its checkpoints. The helpers work without pytest; only the fixtures need it.

This is test tooling: it administers test databases and stands in for the passage of time with
plain SQL of its own (`create database`, `alter database ... set pgdurable.now`, expiring the
lease of a run it crashed).
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pgdurable.api.app import App
from pgdurable.api.decorators import WorkflowFunction
from pgdurable.api.handles import TERMINAL, WorkflowHandle
from pgdurable.core.errors import ConfigurationError, InvalidArgument
from pgdurable.dev import embedded
from pgdurable.runtime import context
from pgdurable.runtime.context import WorkflowContext
from pgdurable.store import migrate

TEST_DSN_ENV = "PGDURABLE_TEST_DSN"

_names = itertools.count()


# -- databases ------------------------------------------------------------------------------------


def server_dsn(data_dir: Path | None = None) -> str:
    """The server to make test databases on: `PGDURABLE_TEST_DSN` if set, else the embedded
    PostgreSQL with its data in `data_dir` (default `.pgdurable/test/pg`), started if needed.
    The role needs CREATEDB."""
    dsn = os.environ.get(TEST_DSN_ENV)
    if dsn:
        return dsn
    return embedded.ensure_running((data_dir or Path(".pgdurable/test/pg")).resolve())


def unique_name(prefix: str) -> str:
    """A database name no other test or session uses: `prefix`, this process, a counter and a
    random part (sessions on other machines may share the server)."""
    return f"{prefix}_{os.getpid()}_{next(_names)}_{uuid.uuid4().hex[:6]}"


def database_dsn(server: str, name: str) -> str:
    """The DSN of database `name` on the server of `server`."""
    return make_conninfo(server, dbname=name)


@contextmanager
def _admin(server: str) -> Iterator[psycopg.Connection[Any]]:
    try:
        conn = psycopg.connect(server, autocommit=True, connect_timeout=30)
    except psycopg.OperationalError as exc:
        raise ConfigurationError(f"cannot reach the test server: {exc}") from None
    with conn:
        yield conn


def create_database(server: str, name: str, *, template: str | None = None) -> str:
    """Create database `name` (empty, or a copy of `template`) and return its DSN."""
    statement = sql.SQL("create database {}").format(sql.Identifier(name))
    if template is not None:
        statement += sql.SQL(" template {}").format(sql.Identifier(template))
    with _admin(server) as conn:
        conn.execute(statement)
    return database_dsn(server, name)


TemplateSetup = Callable[[psycopg.Connection[Any]], None]


def create_template(server: str, name: str, setup: TemplateSetup | None = None) -> str:
    """Create database `name` with the pgdurable schema (then `setup(conn)`, for a schema of
    your own), marked as a template that accepts no connections (so cloning it never waits for
    a session left open on it). Returns its DSN."""
    dsn = create_database(server, name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        migrate.migrate(conn)
        if setup is not None:
            setup(conn)
    with _admin(server) as conn:
        conn.execute(sql.SQL("alter database {} with is_template true allow_connections false")
                     .format(sql.Identifier(name)))
    return dsn


def drop_database(server: str, name: str) -> None:
    """Drop database `name` if it exists (a template too), ending the sessions still on it."""
    ident = sql.Identifier(name)
    with _admin(server) as conn:
        exists = conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone()
        if exists:
            conn.execute(sql.SQL("alter database {} with is_template false").format(ident))
            conn.execute(sql.SQL("drop database if exists {} with (force)").format(ident))


# -- the clock ------------------------------------------------------------------------------------


class Clock:
    """The fake clock of one database: every pgdurable SQL function reads the time through
    `pgdurable.now()`, which returns the `pgdurable.now` setting when it is set.

    `set`, `advance` and `reset` store the setting on the database (`alter database ... set`),
    which every connection opened afterwards reads, and then replace the connections of the
    watched Apps (`watch`; the plugin's Apps are watched): idle ones at once, the ones in use
    when they are given back. A connection you opened yourself keeps the time it had: open a
    new one, or `apply(conn)`. The fake time stands still until moved; leases and delays
    expire only when it passes them. A non-superuser role needs `GRANT SET ON PARAMETER
    pgdurable.now TO <role>` (by a superuser, once) to set it on a database.
    """

    def __init__(self, dsn: str, apps: list[App] | None = None) -> None:
        self.dsn = dsn
        self.now: datetime | None = None  # None: the database's own clock
        self._apps = apps if apps is not None else []

    def watch(self, app: App) -> App:
        """Keep `app`'s connections on this clock when it moves."""
        if app not in self._apps:
            self._apps.append(app)
        return app

    def set(self, when: datetime) -> datetime:
        """Stop the clock at `when` (a timezone-aware datetime)."""
        if not isinstance(when, datetime) or when.tzinfo is None:
            raise InvalidArgument(f"the clock needs a timezone-aware datetime, not {when!r}")
        self._store(when.isoformat())
        self.now = when
        return when

    def advance(self, seconds: float | timedelta) -> datetime:
        """Move the clock on by `seconds` (or a timedelta) from the time it shows; if it was
        not set, from the database's clock now. Returns the new time."""
        delta = seconds if isinstance(seconds, timedelta) else timedelta(seconds=seconds)
        if not math.isfinite(delta.total_seconds()):
            raise InvalidArgument(f"cannot advance the clock by {seconds!r}")
        base = self.now
        if base is None:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                row = conn.execute("select clock_timestamp()").fetchone()
            assert row is not None
            base = row[0]
        return self.set(base + delta)

    def reset(self) -> None:
        """Back to the database's own clock."""
        self._store(None)
        self.now = None

    def apply(self, conn: psycopg.Connection[Any]) -> None:
        """Put an open connection of yours on this clock (for its session)."""
        value = "" if self.now is None else self.now.isoformat()
        conn.execute("select set_config('pgdurable.now', %s, false)", (value,))

    def _store(self, value: str | None) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute("select current_database(), current_user").fetchone()
            assert row is not None
            database, role = row
            target = sql.SQL("alter database {} ").format(sql.Identifier(database))
            if value is None:
                statement = target + sql.SQL("reset pgdurable.now")
            else:
                statement = target + sql.SQL("set pgdurable.now = {}").format(sql.Literal(value))
            try:
                conn.execute(statement)
            except psycopg.errors.InsufficientPrivilege as exc:
                raise ConfigurationError(
                    f"role {role!r} may not set pgdurable.now on database {database!r} "
                    f"({exc}); a superuser can allow it once: GRANT SET ON PARAMETER "
                    f"pgdurable.now TO {role}"
                ) from None
        for app in self._apps:
            _reconnect(app)


def _reconnect(app: App) -> None:
    """Replace the connections of a connected App (and leave an unconnected one alone): new
    connections read the database's session defaults, such as `pgdurable.now`."""
    if not app.connected:
        return
    app.db.pool.drain()  # idle connections now, the others when they come back
    app.completions.release_connection()  # the group commit keeps one checked out


# -- crashing a workflow at a step ----------------------------------------------------------------


class SimulatedCrash(BaseException):
    """Raised inside a step to stop its execution the way a crash would. It is not an
    Exception, so pgdurable records nothing (no step outcome, no ending) and the run stays
    `running` under a lease that is no longer renewed."""


class CrashNotReached(AssertionError):
    """The workflow ended before it ran the step it was to crash at."""


@dataclass
class _Plan:
    workflow_id: str
    step: int
    when: Literal["before", "after"]
    epoch: int | None = None  # the crashed execution's, once it crashed
    crashed: threading.Event = field(default_factory=threading.Event)

    def matches(self, ctx: WorkflowContext) -> bool:
        # Inside a step body the context has just numbered that step.
        return (self.epoch is None and ctx.workflow_id == self.workflow_id
                and ctx.next_step_no - 1 == self.step)

    def crash(self, ctx: WorkflowContext, name: str) -> NoReturn:
        self.epoch = ctx.epoch
        self.crashed.set()
        raise SimulatedCrash(
            f"simulated crash of workflow {self.workflow_id!r} {self.when} the body of step "
            f"{self.step} ({name})")


_in_crashing_step: ContextVar[bool] = ContextVar("pgdurable_testing_crash", default=False)


def _crashing_body(plan: _Plan, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def body(*args: Any, **kwargs: Any) -> Any:
        ctx = context.current()
        if ctx is None or _in_crashing_step.get() or not plan.matches(ctx):
            return fn(*args, **kwargs)
        token = _in_crashing_step.set(True)  # steps it calls are plain calls
        try:
            if plan.when == "after":
                fn(*args, **kwargs)
            plan.crash(ctx, name)
        finally:
            _in_crashing_step.reset(token)

    return body


@contextmanager
def _crashing(app: App, plan: _Plan) -> Iterator[None]:
    """While inside, the step bodies of `app` crash `plan`'s run at its step."""
    originals = {name: step.fn for name, step in app.registry.steps.items()}
    for name, step in app.registry.steps.items():
        step.fn = _crashing_body(plan, name, step.fn)
    try:
        yield
    finally:
        for name, fn in originals.items():
            app.registry.steps[name].fn = fn


def crash_at_step(
    app: App,
    workflow: WorkflowFunction[Any, Any] | str,
    *args: Any,
    step: int,
    when: Literal["before", "after"] = "before",
    workflow_id: str | None = None,
    timeout: float = 30.0,
    **kwargs: Any,
) -> WorkflowHandle[Any]:
    """Start `workflow(*args, **kwargs)` in this process, crash its execution when it reaches
    step `step`, then continue the run here from its checkpoints; returns its handle.

    Steps are numbered from 0 in call order, as pgdurable numbers them: steps, transaction
    steps and durable sleeps each take a number. The crash happens in the body of step `step`
    (a step or transaction step that was not recorded yet): with `when="before"` before the
    body runs, with `"after"` once it ran but before its checkpoint is written, so the replay
    runs it again (a transaction step's writes roll back). Nothing of the crashed execution is
    recorded; steps 0..step-1 are replayed from their checkpoints, not run again. An
    at-most-once step records its intent before its body, so a crash in it makes the replay
    raise StepOutcomeUnknown there, as a real crash would.

    The continuation is a takeover with a new epoch, as after a crash in production: the
    crashed execution's lease is expired and the run taken over (by another process first,
    if one is quicker). Raises CrashNotReached if the run ends before the step, TimeoutError
    if it neither crashes nor ends within `timeout` seconds.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise InvalidArgument(f"step must be an integer >= 0, not {step!r}")
    if when not in ("before", "after"):
        raise InvalidArgument(f"when must be 'before' or 'after', not {when!r}")
    wf = app.resolve(workflow)
    plan = _Plan(workflow_id or str(uuid.uuid4()), step, when)
    deadline = time.monotonic() + timeout
    with _crashing(app, plan):
        handle = app.start_run(wf, args, kwargs, workflow_id=plan.workflow_id)
        while not plan.crashed.wait(0.01):
            status = handle.status()
            if status in TERMINAL and not plan.crashed.is_set():
                raise CrashNotReached(
                    f"workflow {plan.workflow_id!r} ended ({status}) before the body of its "
                    f"step {step} ran (steps, transactions and sleeps count, from 0)")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"workflow {plan.workflow_id!r} reached neither step {step} nor its end "
                    f"within {timeout}s (status: {status})")
    assert plan.epoch is not None
    _take_over(app, plan.workflow_id, plan.epoch, deadline)
    return handle


def _take_over(app: App, workflow_id: str, epoch: int, deadline: float) -> None:
    """Expire the crashed execution's lease and continue the run here. Until the crashed
    execution is forgotten, this process's heartbeat may renew the lease once more: then try
    again. Another process taking the run over first is as good."""
    while True:
        with app.db.connection() as conn:
            conn.execute(
                "update pgdurable.workflows set lease_until = pgdurable.now() - interval '1s' "
                "where id = %s and attempt = %s and status = 'running'", (workflow_id, epoch))
        if app.take_over(workflow_id):
            return
        info = app.get_workflow(workflow_id)
        if info.attempt != epoch or info.status != "running":
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"could not take workflow {workflow_id!r} over after its crash")
        time.sleep(0.01)


# -- the pytest plugin ----------------------------------------------------------------------------

if TYPE_CHECKING or "pytest" in sys.modules:  # pytest is loading us: define the fixtures
    import pytest

    @pytest.fixture(scope="session")
    def pgdurable_server_dsn(request: pytest.FixtureRequest) -> str:
        """The server of the test databases (PGDURABLE_TEST_DSN, else the embedded one)."""
        return server_dsn(request.config.rootpath / ".pgdurable" / "test" / "pg")

    @pytest.fixture(scope="session")
    def pgdurable_template_setup() -> TemplateSetup | None:
        """Override (session scope) to return `setup(conn)`: it runs once per session on the
        template after the migrations, so every test database has your tables too."""
        return None

    @pytest.fixture(scope="session")
    def pgdurable_template(pgdurable_server_dsn: str,
                           pgdurable_template_setup: TemplateSetup | None) -> Iterator[str]:
        """The name of this session's migrated template database."""
        name = unique_name("pgd_tmpl")
        create_template(pgdurable_server_dsn, name, pgdurable_template_setup)
        yield name
        drop_database(pgdurable_server_dsn, name)

    @pytest.fixture
    def pgdurable_dsn(pgdurable_server_dsn: str, pgdurable_template: str) -> Iterator[str]:
        """The DSN of a fresh migrated database of this test's own (dropped after it)."""
        name = unique_name("pgd_test")
        yield create_database(pgdurable_server_dsn, name, template=pgdurable_template)
        drop_database(pgdurable_server_dsn, name)

    @pytest.fixture
    def _pgdurable_apps() -> list[App]:
        return []

    @pytest.fixture
    def pgdurable_bind(pgdurable_dsn: str, _pgdurable_apps: list[App]
                       ) -> Iterator[Callable[[App], App]]:
        """`pgdurable_bind(app)`: point `app` at the test's database (closing its connections
        first) and return it; it is closed after the test, and follows `pgdurable_clock`."""

        def bind(app: App) -> App:
            app.close()
            app.use_dsn(pgdurable_dsn)
            if app not in _pgdurable_apps:
                _pgdurable_apps.append(app)
            return app

        yield bind
        for app in reversed(_pgdurable_apps):
            app.close()

    @pytest.fixture
    def pgdurable_app(pgdurable_bind: Callable[[App], App]) -> App:
        """A new App on the test's database (register workflows on it in the test)."""
        return pgdurable_bind(App())

    @pytest.fixture
    def pgdurable_clock(pgdurable_dsn: str, _pgdurable_apps: list[App]) -> Clock:
        """The fake clock of the test's database; see `Clock`."""
        return Clock(pgdurable_dsn, _pgdurable_apps)
