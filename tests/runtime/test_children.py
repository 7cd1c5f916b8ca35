"""Child workflows: checkpointed starts (replay never starts a child twice), a parent that
waits holding no slot, woken by its last child's own final commit, typed results in order,
failures raised with the child's id, wait_first, and the bad inputs refused at the call."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

import pgdurable
from tests.support.runs import background_worker
from tests.support.waiting import wait_until

Conn = psycopg.Connection[Any]


def children_of(conn: Conn, parent: str) -> list[tuple[str, str]]:
    return [(r[0], r[1]) for r in conn.execute(
        "select id, status from pgdurable.workflows where parent_id = %s order by id",
        (parent,))]


def step_names(conn: Conn, wid: str) -> list[str]:
    return [r[0] for r in conn.execute(
        "select name from pgdurable.steps where workflow_id = %s order by step_no", (wid,))]


def test_a_fan_out_joins_with_the_parent_holding_no_slot(app: pgdurable.App, conn: Conn) -> None:
    # One slot in the queue for the parent and its 20 children: the parent must give it back.
    tasks = app.queue("tasks", concurrency=1)
    parents_executions: list[int] = []

    @app.workflow(name="square")
    def square(n: int) -> int:
        return n * n

    @app.workflow(name="fan")
    def fan(n: int) -> int:
        parents_executions.append(1)
        handles = tasks.enqueue_many(square, [(i,) for i in range(n)])
        return sum(pgdurable.gather(handles))

    handle = tasks.enqueue(fan, 20, workflow_id="fan-1")
    with background_worker(app, "tasks"):
        assert handle.result(timeout=60) == sum(i * i for i in range(20))
    kids = children_of(conn, "fan-1")
    assert [k for k, _ in kids] == sorted(f"fan-1:0:{i}" for i in range(20))  # derived ids
    assert {s for _, s in kids} == {"succeeded"}
    assert step_names(conn, "fan-1") == ["pgdurable.children", "pgdurable.gather"]
    # Suspended once while the children ran, then replayed: the children were started once.
    assert len(parents_executions) == 2
    assert conn.execute("select attempt from pgdurable.workflows where id = 'fan-1'"
                        ).fetchone() == (2,)


def test_results_come_back_typed_and_failures_carry_the_childs_id(
        app: pgdurable.App, conn: Conn) -> None:
    app.queue("kids")

    @app.workflow(name="maybe")
    def maybe(n: int) -> dict[str, int]:
        if n == 2:
            raise ValueError("two is bad")
        return {"n": n}

    @app.workflow(name="collect")
    def collect() -> list[str]:
        kids = app.registry.queues["kids"]
        handles = [kids.enqueue(maybe, i) for i in range(4)]
        outcomes = pgdurable.gather(handles, return_exceptions=True)
        shown = [f"{type(o).__name__}:{getattr(o, 'workflow_id', '')}" if isinstance(
            o, Exception) else f"ok:{o['n']}" for o in outcomes]
        try:
            pgdurable.gather(handles)
        except pgdurable.WorkflowFailed as failed:
            shown.append(f"raised:{failed.workflow_id}:{failed.message}")
        shown.append(f"first:{handles.index(pgdurable.wait_first(handles))}")
        shown.append(f"one:{handles[0].result()['n']}")
        return shown

    run = app.queue("parents").enqueue(collect, workflow_id="col")
    with background_worker(app, "kids", "parents"):
        shown = run.result(timeout=60)
    assert shown[:4] == ["ok:0", "ok:1", "WorkflowFailed:col:2", "ok:3"]  # each enqueue: a step
    assert shown[4] == "raised:col:2:two is bad"
    assert shown[5].startswith("first:") and shown[6] == "one:0"


def test_an_in_process_parent_waits_in_its_thread(app: pgdurable.App, conn: Conn) -> None:
    app.queue("kids")

    @app.workflow(name="double")
    def double(n: int) -> int:
        return 2 * n

    @app.workflow(name="local")
    def local() -> int:
        child = app.start(double, 21)  # a child too: checkpointed, executed in this process
        return double(1) + child.result()  # calling a workflow: a child and a wait

    assert app.start(local, workflow_id="loc").result(timeout=30) == 44
    assert [k for k, _ in children_of(conn, "loc")] == ["loc:0", "loc:1"]


def test_the_last_child_wakes_the_parent_even_with_no_worker_left(
        app: pgdurable.App, conn: Conn) -> None:
    app.queue("kids")
    gate = threading.Event()

    @app.workflow(name="slow")
    def slow() -> str:
        gate.wait(30)
        return "done"

    @app.workflow(name="waiter")
    def waiter() -> list[str]:
        return pgdurable.gather(app.registry.queues["kids"].enqueue_many(slow, [(), ()]))

    run = app.queue("parents").enqueue(waiter, workflow_id="w")
    with background_worker(app, "parents"):  # only the parent's queue: it suspends waiting
        wait_until(lambda: run.info().waiting_for == "children", what="the parent to suspend")
    # The children end in some other process (here: SQL) after every worker is gone.
    for kid, _ in children_of(conn, "w"):
        conn.execute("select pgdurable.claim('gone', array['kids'], 1, 30, array['slow'])")
        conn.execute("select pgdurable.finish_workflow(%s, 1, 'succeeded', '\"done\"', null)",
                     (kid,))
    assert run.info().waiting_for is None  # woken by the last child's own commit
    assert conn.execute("select count(*) from pgdurable.ready where workflow_id = 'w'"
                        ).fetchone() == (1,)
    gate.set()
    with background_worker(app, "parents"):  # a new worker finishes it
        assert run.result(timeout=30) == ["done", "done"]


def test_bad_fan_in_input_is_refused_at_the_call(app: pgdurable.App, dsn: str) -> None:
    other = pgdurable.App(dsn)
    try:
        with pytest.raises(pgdurable.InvalidArgument, match="list of workflow handles"):
            pgdurable.gather("not handles")  # type: ignore[arg-type]
        with pytest.raises(pgdurable.InvalidArgument, match="needs workflow handles"):
            pgdurable.gather([1, 2])  # type: ignore[list-item]
        mixed = [pgdurable.WorkflowHandle(app, "a"), pgdurable.WorkflowHandle(other, "b")]
        with pytest.raises(pgdurable.InvalidArgument, match="different Apps"):
            pgdurable.gather(mixed)
        with pytest.raises(pgdurable.InvalidArgument, match="at least one"):
            pgdurable.wait_first([])
        assert pgdurable.gather([]) == []
    finally:
        other.close()


def test_child_options_that_cannot_apply_fail_the_parent_clearly(
        app: pgdurable.App, conn: Conn) -> None:
    app.queue("kids")

    @app.workflow(name="kid")
    def kid() -> None: ...

    @app.workflow(name="wrong")
    def wrong(case: str) -> str:
        kids = app.registry.queues["kids"]
        try:
            if case == "dedup":
                kids.enqueue(kid, dedup_key="k")
            elif case == "timeout":
                kids.enqueue(kid).result(timeout=5)
            elif case == "queue":
                pgdurable.Queue(app, "nowhere").enqueue(kid)
        except pgdurable.PgDurableError as exc:
            return f"{type(exc).__name__}: {exc}"
        return "accepted"

    assert "dedup_key is not supported" in app.start(wrong, "dedup").result(timeout=30)
    assert "takes no timeout" in app.start(wrong, "timeout").result(timeout=30)
    assert app.start(wrong, "queue").result(timeout=30).startswith("UnknownQueue")
