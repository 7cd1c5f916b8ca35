"""`app.start(..., conn=c)`: the run is created inside the caller's transaction."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

import pgdurable
from pgdurable import WorkflowFunction
from tests.support.runs import Calls, workflow_count
from tests.support.sql import scalar
from tests.support.waiting import wait_until

Conn = psycopg.Connection[tuple[object, ...]]


@pytest.fixture
def orders(conn: Conn) -> Conn:
    conn.execute("create table orders (id text primary key, paid boolean not null default false)")
    return conn


@pytest.fixture
def caller(dsn: str) -> Iterator[Conn]:
    """The application's own connection (not autocommit, like most apps use)."""
    with psycopg.connect(dsn) as connection:
        yield connection


def build(app: pgdurable.App, calls: Calls) -> WorkflowFunction[[str], str]:
    @app.transaction()
    def mark_paid(conn: psycopg.Connection[tuple[object, ...]], order_id: str) -> bool:
        calls.hit("mark_paid")
        cur = conn.execute("update orders set paid = true where id = %s", (order_id,))
        return cur.rowcount == 1

    @app.workflow()
    def checkout(order_id: str) -> str:
        return f"{order_id} paid={mark_paid(order_id)}"

    return checkout


def test_run_is_invisible_until_commit_then_runs_exactly_once(
    app: pgdurable.App, orders: Conn, caller: Conn
) -> None:
    calls = Calls()
    checkout = build(app, calls)
    with caller.transaction():
        caller.execute("insert into orders (id) values ('o1')")
        handle = app.start(checkout, "o1", conn=caller, workflow_id="order-o1")
        # Neither the business row nor the run is visible outside the transaction...
        assert workflow_count(orders) == 0
        assert scalar(orders, "select count(*) from orders") == 0
        with pytest.raises(pgdurable.WorkflowNotFound):
            app.retrieve("order-o1")
        # ...and the run does not execute before the commit.
        time.sleep(0.3)
        assert calls["mark_paid"] == 0
    assert handle.result(timeout=10) == "o1 paid=True"
    assert calls["mark_paid"] == 1
    assert scalar(orders, "select paid from orders where id = 'o1'") is True
    assert app.retrieve("order-o1").status() == "succeeded"
    # The id stays an idempotency key after commit.
    assert app.start(checkout, "o1", workflow_id="order-o1").result(timeout=10) == "o1 paid=True"
    assert calls["mark_paid"] == 1


def test_rollback_means_the_run_never_existed(
    app: pgdurable.App, orders: Conn, caller: Conn
) -> None:
    calls = Calls()
    checkout = build(app, calls)
    with caller.transaction():
        caller.execute("insert into orders (id) values ('o2')")
        handle = app.start(checkout, "o2", conn=caller, workflow_id="order-o2")
        raise psycopg.Rollback()
    wait_until(lambda: app.executor.local("order-o2") is None,
               what="the waiting execution to give up")
    with pytest.raises(pgdurable.WorkflowNotFound, match="rolled back"):
        handle.result(timeout=10)
    assert calls["mark_paid"] == 0
    assert workflow_count(orders) == 0
    assert scalar(orders, "select count(*) from orders") == 0


def test_an_error_after_start_rolls_back_business_row_and_run(
    app: pgdurable.App, orders: Conn, caller: Conn
) -> None:
    calls = Calls()
    checkout = build(app, calls)
    orders.execute("insert into orders (id) values ('dup')")
    with pytest.raises(psycopg.errors.UniqueViolation), caller.transaction():
        caller.execute("insert into orders (id) values ('o3')")
        handle = app.start(checkout, "o3", conn=caller, workflow_id="order-o3")
        caller.execute("insert into orders (id) values ('dup')")
    with pytest.raises(pgdurable.WorkflowNotFound, match="rolled back"):
        handle.result(timeout=10)
    wait_until(lambda: app.executor.local("order-o3") is None)
    assert calls["mark_paid"] == 0
    assert workflow_count(orders) == 0
    assert scalar(orders, "select count(*) from orders") == 1


def test_start_on_an_autocommit_connection_runs_at_once(
    app: pgdurable.App, orders: Conn
) -> None:
    calls = Calls()
    orders.execute("insert into orders (id) values ('o4')")
    handle = app.start(build(app, calls), "o4", conn=orders, workflow_id="order-o4")
    assert handle.result(timeout=10) == "o4 paid=True"
    assert calls["mark_paid"] == 1


def test_starting_an_existing_id_in_a_transaction_does_not_run_it_again(
    app: pgdurable.App, orders: Conn, caller: Conn
) -> None:
    calls = Calls()
    checkout = build(app, calls)
    orders.execute("insert into orders (id) values ('o5')")
    assert app.start(checkout, "o5", workflow_id="order-o5").result(timeout=10) == "o5 paid=True"
    with caller.transaction():
        handle = app.start(checkout, "o5", conn=caller, workflow_id="order-o5")
    assert handle.result(timeout=10) == "o5 paid=True"
    assert calls["mark_paid"] == 1
    assert workflow_count(orders) == 1


def test_rolled_back_savepoint_means_the_run_never_existed(
    app: pgdurable.App, orders: Conn, caller: Conn
) -> None:
    calls = Calls()
    checkout = build(app, calls)
    with caller.transaction():
        caller.execute("insert into orders (id) values ('o6')")
        with caller.transaction():  # a savepoint, e.g. a nested atomic block
            handle = app.start(checkout, "o6", conn=caller, workflow_id="order-o6")
            raise psycopg.Rollback()
    wait_until(lambda: app.executor.local("order-o6") is None)
    assert calls["mark_paid"] == 0
    assert workflow_count(orders) == 0
    with pytest.raises(pgdurable.WorkflowNotFound, match="rolled back"):
        handle.result(timeout=3)


def test_handle_of_an_uncommitted_run_does_not_claim_a_rollback(
    app: pgdurable.App, orders: Conn, caller: Conn
) -> None:
    calls = Calls()
    with caller.transaction():
        handle = app.start(build(app, calls), "o7", conn=caller, workflow_id="order-o7")
        with pytest.raises(pgdurable.WorkflowNotFound) as missing:
            handle.status()
        assert "rolled back" not in str(missing.value), str(missing.value)
    handle.result(timeout=10)
