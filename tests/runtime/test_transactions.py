"""`@app.transaction()`: the user's SQL and the step's checkpoint commit in one transaction."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest
from psycopg.pq import TransactionStatus

import pgdurable
from pgdurable import WorkflowFunction
from tests.support.fixtures import AppFactory
from tests.support.runs import FUTURE, Calls, Gate, run_state
from tests.support.sql import scalar
from tests.support.waiting import wait_until

Conn = psycopg.Connection[tuple[object, ...]]
AnyConn = psycopg.Connection[tuple[int]]


@pytest.fixture
def ledger(conn: Conn) -> Conn:
    conn.execute("create table ledger (id serial primary key, tag text not null)")
    return conn


def tags(conn: Conn) -> list[str]:
    return [str(r[0]) for r in conn.execute("select tag from ledger order by id").fetchall()]


def test_user_rows_and_checkpoint_commit_together(
    app: pgdurable.App, ledger: Conn, dsn: str
) -> None:
    seen_from_outside: list[int] = []

    @app.transaction()
    def book(conn: AnyConn, tag: str) -> int:
        assert conn.info.transaction_status == TransactionStatus.INTRANS
        row = conn.execute("insert into ledger (tag) values (%s) returning id", (tag,)).fetchone()
        assert row is not None
        with psycopg.connect(dsn, autocommit=True) as other:  # not committed yet
            seen_from_outside.append(int(scalar(other, "select count(*) from ledger")))
        return row[0]

    @app.workflow()
    def flow(tag: str) -> int:
        return book(tag) + book(tag + "-2")

    assert app.start(flow, "t", workflow_id="tx1").result(timeout=10) == 3
    assert seen_from_outside == [0, 1]
    assert tags(ledger) == ["t", "t-2"]
    steps = app.list_steps("tx1")
    assert [(s.step_no, s.status, s.output) for s in steps] == [(0, "done", 1), (1, "done", 2)]
    # Started again: replayed from the checkpoints, no new rows.
    assert app.start(flow, "t", workflow_id="tx1").result(timeout=10) == 3
    assert tags(ledger) == ["t", "t-2"]


def test_user_exception_rolls_back_the_insert_and_records_the_failure(
    app: pgdurable.App, ledger: Conn
) -> None:
    @app.transaction()
    def book(conn: AnyConn, tag: str) -> None:
        conn.execute("insert into ledger (tag) values (%s)", (tag,))
        raise ValueError(f"cannot book {tag}")

    @app.workflow()
    def flow() -> None:
        book("doomed")

    with pytest.raises(pgdurable.WorkflowFailed) as failed:
        app.start(flow, workflow_id="tx2").result(timeout=10)
    assert failed.value.type_name == "ValueError"
    assert failed.value.message == "cannot book doomed"
    assert tags(ledger) == []
    [step] = app.list_steps("tx2")
    assert step.status == "failed"
    assert step.error is not None and step.error["type"] == "ValueError"
    assert step.error["message"] == "cannot book doomed"


def test_workflow_can_catch_a_failed_transaction_and_go_on(
    app: pgdurable.App, ledger: Conn
) -> None:
    @app.transaction()
    def book(conn: AnyConn, tag: str) -> None:
        conn.execute("insert into ledger (tag) values (%s)", (tag,))
        if tag == "bad":
            raise KeyError(tag)

    @app.workflow()
    def flow() -> str:
        try:
            book("bad")
        except KeyError:
            book("compensation")
        return "ok"

    assert app.start(flow, workflow_id="tx3").result(timeout=10) == "ok"
    assert tags(ledger) == ["compensation"]
    assert [s.status for s in app.list_steps("tx3")] == ["failed", "done"]


def test_retried_transaction_commits_only_the_successful_attempt(
    app: pgdurable.App, ledger: Conn
) -> None:
    calls = Calls()

    @app.transaction(retries=3, interval=0.01)
    def book(conn: AnyConn) -> int:
        attempt = calls.hit("book")
        conn.execute("insert into ledger (tag) values (%s)", (f"attempt-{attempt}",))
        if attempt < 3:
            raise ConnectionError("flaky")
        return attempt

    @app.workflow()
    def flow() -> int:
        return book()

    assert app.start(flow, workflow_id="tx4").result(timeout=10) == 3
    assert tags(ledger) == ["attempt-3"]


def build_fenced(
    app: pgdurable.App, calls: Calls, gate: Gate, seen: list[type[BaseException]],
    second_gate: Gate | None = None,
) -> WorkflowFunction[[], str]:
    @app.transaction()
    def book(conn: AnyConn) -> str:
        execution = calls.hit("book")
        conn.execute("insert into ledger (tag) values (%s)", (f"execution-{execution}",))
        if execution == 1:
            gate.wait()  # the first execution's insert is pending while it is taken over
        return f"execution-{execution}"

    @app.step()
    def confirm(booking: str) -> str:
        if calls.hit("confirm") == 1 and second_gate is not None:
            second_gate.wait()  # the new owner holds the run here, still `running`
        return booking

    @app.workflow()
    def flow() -> str:
        try:
            return confirm(book())
        except BaseException as exc:
            seen.append(type(exc))
            raise

    return flow


def test_stale_epoch_rolls_back_the_user_insert(
    app: pgdurable.App, make_app: AppFactory, gates: Callable[[], Gate], ledger: Conn
) -> None:
    calls, seen = Calls(), list[type[BaseException]]()
    stale_book, new_confirm = gates(), gates()
    app.start(build_fenced(app, calls, stale_book, seen, new_confirm), workflow_id="tx5")
    stale_book.wait_entered()

    # Another App, whose clock says the first owner's lease expired, takes the run over while
    # the first execution is still inside its transaction, books, and waits in `confirm`.
    app2 = make_app(clock=FUTURE)
    handle2 = app2.start(build_fenced(app2, calls, stale_book, seen, new_confirm),
                         workflow_id="tx5")
    new_confirm.wait_entered()
    assert run_state(ledger, "tx5") == ("running", 2)

    stale_book.open()  # the stale transaction now tries to checkpoint with epoch 1
    wait_until(lambda: seen, what="the stale execution to end")
    assert seen == [pgdurable.FencedError]
    wait_until(lambda: app.executor.local("tx5") is None, what="the stale thread to stop")
    assert tags(ledger) == ["execution-2"]  # the stale insert was rolled back

    new_confirm.open()
    assert handle2.result(timeout=10) == "execution-2"
    assert tags(ledger) == ["execution-2"]
    assert run_state(ledger, "tx5") == ("succeeded", 2)
    assert [(s.output, s.attempt) for s in app2.list_steps("tx5")] == [
        ("execution-2", 2), ("execution-2", 2)]


def test_cancel_during_a_transaction_rolls_back_its_insert(
    app: pgdurable.App, gates: Callable[[], Gate], ledger: Conn
) -> None:
    calls, gate, seen = Calls(), gates(), list[type[BaseException]]()
    handle = app.start(build_fenced(app, calls, gate, seen), workflow_id="tx6")
    gate.wait_entered()
    assert app.cancel("tx6") == "cancelled"
    gate.open()
    wait_until(lambda: seen, what="the cancelled execution to stop")
    assert seen == [pgdurable.FencedError]
    with pytest.raises(pgdurable.WorkflowCancelled):
        handle.result(timeout=5)
    assert tags(ledger) == []
    assert app.list_steps("tx6") == []


def test_transaction_outside_a_workflow_runs_in_its_own_transaction(
    app: pgdurable.App, ledger: Conn
) -> None:
    @app.transaction()
    def book(conn: AnyConn, tag: str) -> str:
        assert conn.info.transaction_status == TransactionStatus.INTRANS
        conn.execute("insert into ledger (tag) values (%s)", (tag,))
        if tag == "bad":
            raise ValueError(tag)
        return tag

    assert book("good") == "good"
    with pytest.raises(ValueError, match="bad"):
        book("bad")
    assert tags(ledger) == ["good"]  # committed; the failing call rolled back
    assert scalar(ledger, "select count(*) from pgdurable.workflows") == 0
    assert scalar(ledger, "select count(*) from pgdurable.steps") == 0


@pytest.mark.parametrize(("sqlstate", "what"), [
    ("40001", "serialization failure"), ("40P01", "deadlock")])
def test_a_transaction_the_server_rolled_back_runs_again_without_using_retries(
    app: pgdurable.App, ledger: Conn, sqlstate: str, what: str
) -> None:
    attempts: list[int] = []

    @app.transaction()  # retries=0: the server's rollbacks are not the step's outcome
    def book(conn: AnyConn, tag: str) -> int:
        attempts.append(1)
        row = conn.execute("insert into ledger (tag) values (%s) returning id", (tag,)).fetchone()
        assert row is not None
        if len(attempts) < 3:
            conn.execute(f"do $$ begin raise exception '{what}' using errcode = '{sqlstate}'; "
                         "end $$")
        return row[0]

    @app.workflow()
    def flow(tag: str) -> int:
        return book(tag)

    assert app.start(flow, "t").result(timeout=30) == 3  # ids 1 and 2 were rolled back
    assert len(attempts) == 3
    assert tags(ledger) == ["t"]


def test_a_user_error_in_a_transaction_step_is_not_run_again(
    app: pgdurable.App, ledger: Conn
) -> None:
    attempts: list[int] = []

    @app.transaction()
    def book(conn: AnyConn) -> None:
        attempts.append(1)
        conn.execute("select 1/0")

    @app.workflow()
    def flow() -> None:
        book()

    with pytest.raises(pgdurable.WorkflowFailed, match="DivisionByZero"):
        app.start(flow).result(timeout=30)
    assert len(attempts) == 1
