"""`app.fork` end to end through a Worker, its bad input (refused before any SQL, or by the
SQL, writing nothing either way), and the run-tree reads: `list_workflows(parent=)` and
`admin.workflow_tree`."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

import pgdurable
from pgdurable import InvalidArgument, UnknownQueue, Worker, WorkflowConflict, WorkflowNotFound
from pgdurable.store.calls import Store
from tests.support.sql import count, set_parent, start, steps

Conn = psycopg.Connection[Any]


def drain(app: pgdurable.App) -> None:
    worker = Worker(app, concurrency=2, poll_interval=0.02, exit_when_idle=True)
    worker.run()
    worker.stop()


@pytest.fixture
def order(app: pgdurable.App) -> tuple[pgdurable.WorkflowFunction[..., str], list[str],
                                       dict[str, str]]:
    """A three-step workflow whose middle step reads `world["price"]` (the side effect a fork
    changes), and the names of the steps that ran, in order."""
    ran: list[str] = []
    world = {"price": "old"}

    @app.step(name="fetch")
    def fetch(item: str) -> str:
        ran.append("fetch")
        return item.upper()

    @app.step(name="price")
    def price(item: str) -> str:
        ran.append("price")
        return f"{item}@{world['price']}"

    @app.step(name="ship")
    def ship(line: str) -> str:
        ran.append("ship")
        return f"shipped {line}"

    @app.workflow(name="order")
    def order_wf(item: str) -> str:
        return ship(price(fetch(item)))

    return order_wf, ran, world


def test_a_fork_replays_the_copied_steps_and_runs_the_rest(
    app: pgdurable.App, conn: Conn,
    order: tuple[pgdurable.WorkflowFunction[..., str], list[str], dict[str, str]],
) -> None:
    wf, ran, world = order
    assert app.start(wf, "tea", workflow_id="o").result(timeout=30) == "shipped TEA@old"
    original = (app.get_workflow("o"), steps(conn, "o"))
    ran.clear()
    world["price"] = "new"

    handle = app.fork("o", from_step=1, workflow_id="f")
    assert handle.workflow_id == "f" and handle.status() == "pending"
    drain(app)
    assert handle.result(timeout=30) == "shipped TEA@new"
    assert ran == ["price", "ship"]  # step 0 was copied, not run again
    info = app.get_workflow("f")
    assert (info.forked_from, info.parent_id, info.inputs) == ("o", None, original[0].inputs)
    assert [(s.step_no, s.name, s.output) for s in app.list_steps("f")] == [
        (0, "fetch", "TEA"), (1, "price", "TEA@new"), (2, "ship", "shipped TEA@new")]
    # The original is untouched.
    assert (app.get_workflow("o"), steps(conn, "o")) == original
    assert app.get_workflow("o").forked_from is None


def test_a_fork_from_the_last_position_continues_a_copy(
    app: pgdurable.App,
    order: tuple[pgdurable.WorkflowFunction[..., str], list[str], dict[str, str]],
) -> None:
    wf, ran, world = order
    app.start(wf, "tea", workflow_id="o").result(timeout=30)
    ran.clear()
    world["price"] = "new"
    handle = app.fork("o", from_step=3)
    drain(app)
    assert handle.result(timeout=30) == "shipped TEA@old"  # everything replayed
    assert ran == []
    # Retried with the same id, the fork is returned, not made again.
    again = app.fork("o", from_step=3, workflow_id=handle.workflow_id)
    assert again.workflow_id == handle.workflow_id and again.status() == "succeeded"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"from_step": -1}, "from_step must be an integer >= 0"),
        ({"from_step": True}, "from_step must be an integer >= 0"),
        ({"from_step": 1.0}, "from_step must be an integer >= 0"),
        ({"from_step": "1"}, "from_step must be an integer >= 0"),
        ({"from_step": None}, "from_step must be an integer >= 0"),
        ({"from_step": 0, "workflow_id": ""}, "workflow_id must be a non-empty string"),
        ({"from_step": 0, "workflow_id": 7}, "workflow_id must be a non-empty string"),
        ({"from_step": 0, "queue": ""}, "queue must be a non-empty string"),
    ],
)
def test_bad_arguments_are_refused_before_any_sql(
    app: pgdurable.App, conn: Conn, monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any],
    match: str,
) -> None:
    def no_sql(*args: Any) -> str:
        raise AssertionError("fork reached the database")

    monkeypatch.setattr(Store, "fork", no_sql)
    with pytest.raises(InvalidArgument, match=match):
        app.fork("anything", **kwargs)
    assert count(conn, "pgdurable.workflows") == 0
    with pytest.raises(InvalidArgument, match="the run to fork must be a non-empty string"):
        app.fork("", from_step=0)


def test_bad_forks_refused_by_the_database_write_nothing(
    app: pgdurable.App, conn: Conn,
    order: tuple[pgdurable.WorkflowFunction[..., str], list[str], dict[str, str]],
) -> None:
    wf, _, _ = order
    app.start(wf, "tea", workflow_id="o").result(timeout=30)
    start(conn, "other")
    before = (count(conn, "pgdurable.workflows"), count(conn, "pgdurable.steps"))
    with pytest.raises(WorkflowNotFound, match="'missing' does not exist"):
        app.fork("missing", from_step=0)
    with pytest.raises(InvalidArgument, match=r"has 3 recorded steps: fork from a step in 0\.\.3"):
        app.fork("o", from_step=4)
    with pytest.raises(UnknownQueue, match="'nowhere' does not exist"):
        app.fork("o", from_step=0, queue="nowhere")
    with pytest.raises(WorkflowConflict, match="'other' already exists"):
        app.fork("o", from_step=0, workflow_id="other")
    assert (count(conn, "pgdurable.workflows"), count(conn, "pgdurable.steps")) == before


# -- trees ------------------------------------------------------------------------------------


def _family(conn: Conn) -> None:
    """root -> a, b; a -> a1, a2; a1 -> a1x (made children in SQL, as child starts will)."""
    for wid in ("root", "a", "b", "a1", "a2", "a1x", "stranger"):
        start(conn, wid)
    set_parent(conn, "root", "a", "b")
    set_parent(conn, "a", "a1", "a2")
    set_parent(conn, "a1", "a1x")


def test_list_workflows_by_parent(app: pgdurable.App, conn: Conn) -> None:
    _family(conn)
    assert {w.id for w in app.list_workflows(parent="root")} == {"a", "b"}
    assert {w.id for w in app.admin.list_workflows(parent="a1")} == {"a1x"}
    assert app.list_workflows(parent="b") == []
    assert app.list_workflows(parent="missing") == []
    assert app.get_workflow("a1").parent_id == "a"
    with pytest.raises(InvalidArgument, match="parent must be a non-empty string"):
        app.list_workflows(parent="")


def test_workflow_tree_nests_the_descendants(app: pgdurable.App, conn: Conn) -> None:
    _family(conn)
    root = app.admin.workflow_tree("root")
    assert [(n.id, n.depth, n.more) for n in root.walk()] == [
        ("root", 0, 0), ("a", 1, 0), ("a1", 2, 0), ("a1x", 3, 0), ("a2", 2, 0), ("b", 1, 0)]
    assert all(n.status == "running" for n in root.walk())
    cut = app.admin.workflow_tree("root", max_depth=1)
    assert [(n.id, n.more) for n in cut.walk()] == [("root", 0), ("a", 2), ("b", 0)]
    few = app.admin.workflow_tree("root", per_parent=1)
    assert [(n.id, n.more) for n in few.walk()] == [
        ("root", 1), ("a", 1), ("a1", 0), ("a1x", 0)]
    assert [n.id for n in app.admin.workflow_tree("a1").walk()] == ["a1", "a1x"]
    with pytest.raises(WorkflowNotFound):
        app.admin.workflow_tree("missing")
    with pytest.raises(InvalidArgument, match="limit must be an integer >= 1"):
        app.admin.workflow_tree("root", limit=0)


def test_a_tree_of_10000_children_is_cut_and_fast(app: pgdurable.App, conn: Conn) -> None:
    start(conn, "big")
    conn.execute(
        "insert into pgdurable.workflows (id, name, status, parent_id) "
        "select 'c' || lpad(i::text, 5, '0'), 'child', 'succeeded', 'big' "
        "from generate_series(1, 10000) i")
    conn.execute(
        "insert into pgdurable.workflows (id, name, status, parent_id) "
        "select 'g' || i, 'grandchild', 'pending', 'c00001' from generate_series(1, 3) i")
    conn.execute("analyze pgdurable.workflows")
    app.admin.workflow_tree("big", limit=5)  # connect, warm up
    began = time.monotonic()
    root = app.admin.workflow_tree("big")
    elapsed = time.monotonic() - began
    assert len(root.children) == 100 and root.more == 9900
    assert [n.id for n in root.children[0].children] == ["g1", "g2", "g3"]
    assert elapsed < 1.0, f"the tree took {elapsed:.2f}s"
