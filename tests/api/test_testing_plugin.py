"""pgdurable.testing, the pytest plugin users get: a user's test file using its fixtures passes
(loaded by name or by the entry point, without registering twice), the fake clock moves a
durable sleep and a queue delay forward for an App already connected, and crash_at_step
continues a run without running its recorded steps again."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

import pgdurable
from pgdurable.errors import ConfigurationError, InvalidArgument, StepOutcomeUnknown
from pgdurable.testing import Clock, CrashNotReached, crash_at_step, unique_name

Conn = psycopg.Connection[Any]
T0 = datetime(2030, 1, 1, tzinfo=UTC)

USER_TESTS = '''
import pgdurable
import psycopg

app = pgdurable.App()  # the user's App, defined at import as in an application


@app.step()
def double(x: int) -> int:
    return 2 * x


@app.workflow()
def flow(x: int) -> int:
    return double(x) + 1


def test_the_users_app_bound_to_a_fresh_database(pgdurable_bind, pgdurable_dsn):
    bound = pgdurable_bind(app)
    assert flow(20) == 41
    with psycopg.connect(pgdurable_dsn) as conn:
        assert conn.execute("select count(*) from pgdurable.workflows").fetchone() == (1,)


def test_each_test_gets_its_own_database(pgdurable_app, pgdurable_dsn):
    @pgdurable_app.workflow(name="inline")
    def inline() -> str:
        return "ok"

    assert inline() == "ok"
    with psycopg.connect(pgdurable_dsn) as conn:
        assert conn.execute("select count(*) from pgdurable.workflows").fetchone() == (1,)


def test_the_clock_fixture(pgdurable_clock, pgdurable_dsn):
    from datetime import datetime, timezone
    when = datetime(2031, 5, 1, tzinfo=timezone.utc)
    pgdurable_clock.set(when)
    with psycopg.connect(pgdurable_dsn) as conn:
        assert conn.execute("select pgdurable.now()").fetchone() == (when,)
'''


def run_user_tests(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, server_dsn: str,
                   conftest: str) -> pytest.RunResult:
    monkeypatch.setenv("PGDURABLE_TEST_DSN", server_dsn)  # not a second embedded server
    pytester.makeconftest(conftest)
    pytester.makepyfile(test_user=USER_TESTS)
    return pytester.runpytest("-p", "no:cacheprovider", "-q")


def test_a_users_tests_pass_with_the_plugin_named_in_pytest_plugins(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, server_dsn: str
) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # only what the conftest names
    result = run_user_tests(pytester, monkeypatch, server_dsn,
                            'pytest_plugins = ["pgdurable.testing"]\n')
    result.assert_outcomes(passed=3)


def test_the_entry_point_loads_it_and_naming_it_too_is_no_double_registration(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, server_dsn: str
) -> None:
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    named = run_user_tests(pytester, monkeypatch, server_dsn,
                           'pytest_plugins = ["pgdurable.testing"]\n')
    named.assert_outcomes(passed=3)
    unnamed = run_user_tests(pytester, monkeypatch, server_dsn, "")
    unnamed.assert_outcomes(passed=3)


def test_the_session_template_and_the_test_databases_are_dropped(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, server_dsn: str, conn: Conn
) -> None:
    def databases() -> set[str]:  # of this process (the inner session runs in it too)
        rows = conn.execute("select datname from pg_database where datname like %s",
                            (f"pgd\\_%\\_{os.getpid()}\\_%",))
        return {str(r[0]) for r in rows}

    before = databases()
    run_user_tests(pytester, monkeypatch, server_dsn, "").assert_outcomes(passed=3)
    assert databases() - before == set()


def test_the_template_setup_fixture_adds_the_users_schema_to_every_test_database(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, server_dsn: str
) -> None:
    monkeypatch.setenv("PGDURABLE_TEST_DSN", server_dsn)
    pytester.makeconftest("""
import pytest

@pytest.fixture(scope="session")
def pgdurable_template_setup():
    return lambda conn: conn.execute("create table orders (id text primary key)")
""")
    pytester.makepyfile(test_schema="""
import psycopg

def test_one(pgdurable_dsn):
    with psycopg.connect(pgdurable_dsn, autocommit=True) as conn:
        conn.execute("insert into orders values ('a')")

def test_two(pgdurable_dsn):
    with psycopg.connect(pgdurable_dsn) as conn:
        assert conn.execute("select count(*) from orders").fetchone() == (0,)
        assert conn.execute("select count(*) from pgdurable.migrations").fetchone()[0] > 0
""")
    pytester.runpytest("-p", "no:cacheprovider", "-q").assert_outcomes(passed=2)


def test_the_module_imports_without_pytest() -> None:
    code = ("import sys; import pgdurable.testing as t; "
            "assert 'pytest' not in sys.modules, 'pytest was imported'; "
            "assert not hasattr(t, 'pgdurable_dsn'); assert callable(t.crash_at_step)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr


# -- the clock ----------------------------------------------------------------------------------


def test_the_clock_moves_a_suspended_durable_sleep_forward(
    app: pgdurable.App, pgdurable_clock: Clock, conn: Conn
) -> None:
    naps = app.queue("naps")
    ran: list[str] = []

    @app.step(name="nap.before")
    def before() -> None:
        ran.append("before")

    @app.step(name="nap.after")
    def after() -> str:
        ran.append("after")
        return "rested"

    @app.workflow(name="nap")
    def nap() -> str:
        before()  # its checkpoint goes through the group commit's connection, at T0
        pgdurable.sleep(3600)
        return after()

    def work() -> None:
        pgdurable.Worker(app, queues=["naps"], exit_when_idle=True, poll_interval=0.05).run()

    pgdurable_clock.set(T0)
    handle = naps.enqueue(nap)
    work()  # the App is connected from here on: the clock must reach its pooled connections
    assert handle.status() == "pending"
    assert handle.info().available_at == T0 + timedelta(hours=1)
    pgdurable_clock.advance(3599)
    work()
    assert (handle.status(), ran) == ("pending", ["before"])
    assert pgdurable_clock.advance(timedelta(seconds=1)) == T0 + timedelta(hours=1)
    work()
    assert handle.result(timeout=10) == "rested"
    assert ran == ["before", "after"]
    # The checkpoint and the ending went through the group commit's connection: new time too.
    step = conn.execute("select started_at from pgdurable.steps where workflow_id = %s "
                        "and name = 'nap.after'", (handle.workflow_id,)).fetchone()
    assert step == (T0 + timedelta(hours=1),)
    assert handle.info().finished_at == T0 + timedelta(hours=1)


def test_the_clock_moves_a_queue_delay_forward(app: pgdurable.App, pgdurable_clock: Clock
                                               ) -> None:
    later = app.queue("later")

    @app.workflow(name="delayed")
    def delayed() -> str:
        return "ran"

    pgdurable_clock.set(T0)
    handle = later.enqueue(delayed, delay=timedelta(minutes=5))
    worker = pgdurable.Worker(app, queues=["later"], exit_when_idle=True, poll_interval=0.05)
    worker.run()
    assert (worker.started, handle.status()) == (0, "pending")
    pgdurable_clock.advance(300)
    pgdurable.Worker(app, queues=["later"], exit_when_idle=True, poll_interval=0.05).run()
    assert handle.result(timeout=10) == "ran"
    assert handle.info().started_at == T0 + timedelta(minutes=5)


def test_the_clock_is_seen_by_new_connections_and_applied_to_open_ones(
    pgdurable_clock: Clock, dsn: str, conn: Conn
) -> None:
    def now(c: Conn) -> datetime:
        row = c.execute("select pgdurable.now()").fetchone()
        assert row is not None
        return row[0]  # type: ignore[no-any-return]

    assert pgdurable_clock.now is None
    wall = now(conn)
    moved = pgdurable_clock.advance(600)  # unset: from the database's own clock
    assert timedelta(seconds=600) <= moved - wall < timedelta(seconds=660)
    with psycopg.connect(dsn) as fresh:
        assert now(fresh) == moved
    assert now(conn) < moved  # opened before: keeps its session's time until told
    pgdurable_clock.apply(conn)
    assert now(conn) == moved
    pgdurable_clock.reset()
    with psycopg.connect(dsn) as fresh:
        assert now(fresh) < moved
    assert pgdurable_clock.now is None


def test_the_clock_refuses_a_naive_datetime(pgdurable_clock: Clock) -> None:
    with pytest.raises(InvalidArgument, match="timezone-aware"):
        pgdurable_clock.set(datetime(2030, 1, 1))


def test_a_role_that_may_not_set_the_clock_is_told_how_to_allow_it(
    conn: Conn, dsn: str
) -> None:
    role = unique_name("pgd_role")
    try:
        conn.execute(f"create role {role} login password 'x'")
    except psycopg.Error as exc:
        pytest.skip(f"cannot create a role on this server: {exc}")
    try:
        conn.execute(f"alter database {conn.info.dbname} owner to {role}")
        clock = Clock(psycopg.conninfo.make_conninfo(dsn, user=role, password="x"))
        with pytest.raises(ConfigurationError,
                           match=f"GRANT SET ON PARAMETER pgdurable.now TO {role}"):
            clock.set(T0)
    finally:
        conn.execute(f"alter database {conn.info.dbname} owner to current_user")
        conn.execute(f"drop role {role}")


# -- crash_at_step ------------------------------------------------------------------------------


def three_steps(app: pgdurable.App, ran: list[str]) -> pgdurable.WorkflowFunction[[str], str]:
    @app.step(name="s.fetch")
    def fetch(x: str) -> str:
        ran.append("fetch")
        return x.upper()

    @app.step(name="s.charge")
    def charge(x: str) -> str:
        ran.append("charge")
        return f"charged {x}"

    @app.step(name="s.ship")
    def ship(x: str) -> str:
        ran.append("ship")
        return f"{x}, shipped"

    @app.workflow(name="s.order")
    def order(x: str) -> str:
        return ship(charge(fetch(x)))

    return order


def attempts(app: pgdurable.App, workflow_id: str) -> list[tuple[str, int]]:
    return [(s.name, s.attempt) for s in app.list_steps(workflow_id)]


def test_a_crash_before_a_step_replays_the_recorded_ones_without_running_them(
    app: pgdurable.App
) -> None:
    ran: list[str] = []
    order = three_steps(app, ran)
    handle = crash_at_step(app, order, "book", step=1)
    assert handle.result(timeout=30) == "charged BOOK, shipped"
    assert ran == ["fetch", "charge", "ship"]  # step 0 once: replayed, not run again
    assert attempts(app, handle.workflow_id) == [("s.fetch", 1), ("s.charge", 2), ("s.ship", 2)]
    assert handle.info().attempt == 2


def test_a_crash_after_a_step_body_runs_that_step_again(app: pgdurable.App) -> None:
    ran: list[str] = []
    order = three_steps(app, ran)
    handle = crash_at_step(app, order, "pen", step=1, when="after", workflow_id="order-pen")
    assert handle.workflow_id == "order-pen"
    assert handle.result(timeout=30) == "charged PEN, shipped"
    assert ran == ["fetch", "charge", "charge", "ship"]  # at least once, never fetch again


def test_a_crash_after_a_transaction_step_rolls_its_writes_back(
    app: pgdurable.App, conn: Conn
) -> None:
    conn.execute("create table ledger (entry text not null)")

    @app.transaction(name="t.book")
    def book(tx: Conn, entry: str) -> int:
        tx.execute("insert into ledger values (%s)", (entry,))
        return 1

    @app.workflow(name="t.flow")
    def flow(entry: str) -> int:
        return book(entry)

    assert crash_at_step(app, flow, "rent", step=0, when="after").result(timeout=30) == 1
    assert conn.execute("select entry from ledger").fetchall() == [("rent",)]


def test_an_at_most_once_step_is_not_run_again_after_a_crash_in_it(app: pgdurable.App) -> None:
    ran: list[str] = []

    @app.step(name="m.send", at_most_once=True)
    def send() -> None:
        ran.append("send")

    @app.workflow(name="m.flow")
    def flow() -> str:
        try:
            send()
        except StepOutcomeUnknown:
            return "unknown"
        return "sent"

    assert crash_at_step(app, flow, step=0, when="after").result(timeout=30) == "unknown"
    assert ran == ["send"]


def test_positions_count_sleeps_and_a_step_never_reached_is_reported(app: pgdurable.App
                                                                     ) -> None:
    ran: list[str] = []

    @app.step(name="p.only")
    def only() -> None:
        ran.append("only")

    @app.workflow(name="p.flow")
    def flow() -> str:
        pgdurable.sleep(0)
        only()
        return "done"

    assert crash_at_step(app, flow, step=1).result(timeout=30) == "done"  # 0 is the sleep
    assert ran == ["only"]
    with pytest.raises(CrashNotReached, match="ended \\(succeeded\\) before the body of its "
                                              "step 2"):
        crash_at_step(app, flow, step=2)
    with pytest.raises(InvalidArgument, match="step must be"):
        crash_at_step(app, flow, step=-1)
