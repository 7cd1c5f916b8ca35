"""`pgdurable workflows steps|fork|tree`, `list --parent` and the children in `show`, as real
subprocesses against a real database (children are made in SQL, as child starts will)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.processes import cli as run_cli
from tests.support.processes import one_line_error
from tests.support.sql import begin, count, finish, record, set_parent, start, steps

Conn = psycopg.Connection[Any]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_cli(None, *args, cwd=cwd, timeout=60, libpq=False,
                   PGDURABLE_DATA_DIR=str(cwd / ".pgdurable-unused"), NO_COLOR="1")


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture
def tree(conn: Conn) -> Conn:
    """`o` (succeeded: steps fetch, price done, ship an at-most-once intent) with children
    k1 (with child k1a) and k2."""
    start(conn, "o")
    record(conn, "o", 1, 0, "fetch", output="TEA")
    record(conn, "o", 1, 1, "price", output="TEA@old")
    begin(conn, "o", 1, 2, "ship")
    finish(conn, "o", 1, output="done")
    for wid in ("k1", "k2", "k1a"):
        start(conn, wid, name="child")
    finish(conn, "k2", 1, output=None)
    set_parent(conn, "o", "k1", "k2")
    set_parent(conn, "k1", "k1a")
    return conn


def test_steps_lists_the_positions_to_fork_from(tree: Conn, dsn: str, tmp_path: Path) -> None:
    lines = ok(cli("workflows", "steps", "o", "--dsn", dsn, cwd=tmp_path)).splitlines()
    assert [line.split() for line in lines[:4]] == [
        ["STEP", "STATUS", "NAME"], ["0", "done", "fetch"], ["1", "done", "price"],
        ["2", "started", "ship"]]
    assert "0..3" in lines[4]
    data = json.loads(ok(cli("workflows", "steps", "o", "--json", "--dsn", dsn, cwd=tmp_path)))
    assert data == [{"step_no": 0, "name": "fetch", "status": "done"},
                    {"step_no": 1, "name": "price", "status": "done"},
                    {"step_no": 2, "name": "ship", "status": "started"}]
    assert "no recorded steps" in ok(cli("workflows", "steps", "k2", "--dsn", dsn, cwd=tmp_path))
    assert "'nope' does not exist" in one_line_error(
        cli("workflows", "steps", "nope", "--dsn", dsn, cwd=tmp_path), exit_code=None)


def test_fork_prints_the_new_id(tree: Conn, dsn: str, tmp_path: Path) -> None:
    out = ok(cli("workflows", "fork", "o", "--from-step", "2", "--id", "f", "--dsn", dsn,
                 cwd=tmp_path))
    assert out == "f\n"
    assert [s["name"] for s in steps(tree, "f")] == ["fetch", "price"]
    generated = ok(cli("workflows", "fork", "o", "--from-step", "0", "--dsn", dsn,
                       cwd=tmp_path)).strip()
    assert len(generated) == 36 and steps(tree, generated) == []
    shown = ok(cli("workflows", "show", "f", "--dsn", dsn, cwd=tmp_path))
    assert "forked:   from o" in shown and "status:   pending" in shown


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("o", "--from-step", "4"), "fork from a step in 0..3, not 4"),
        (("nope", "--from-step", "0"), "'nope' does not exist"),
        (("o", "--from-step", "0", "--queue", "nowhere"), "queue 'nowhere' does not exist"),
        (("o", "--from-step", "0", "--id", "k1"), "'k1' already exists"),
    ],
)
def test_fork_bad_input_is_one_line_and_writes_nothing(
    tree: Conn, dsn: str, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    before = (count(tree, "pgdurable.workflows"), count(tree, "pgdurable.steps"))
    line = one_line_error(cli("workflows", "fork", *args, "--dsn", dsn, cwd=tmp_path),
                          exit_code=None)
    assert message in line
    assert (count(tree, "pgdurable.workflows"), count(tree, "pgdurable.steps")) == before


@pytest.mark.parametrize("from_step", ["-1", "x", None])
def test_fork_needs_a_step_number(tree: Conn, dsn: str, tmp_path: Path,
                                  from_step: str | None) -> None:
    args = ["--from-step", from_step] if from_step is not None else []
    result = cli("workflows", "fork", "o", *args, "--dsn", dsn, cwd=tmp_path)
    assert result.returncode == 2 and "--from-step" in result.stderr
    assert count(tree, "pgdurable.workflows") == 4


def test_tree_prints_the_descendants_indented(tree: Conn, dsn: str, tmp_path: Path) -> None:
    out = ok(cli("workflows", "tree", "o", "--dsn", dsn, cwd=tmp_path))
    assert out.splitlines() == [
        "o  succeeded  flow", "  k1  running  child", "    k1a  running  child",
        "  k2  succeeded  child"]
    cut = ok(cli("workflows", "tree", "o", "--max-depth", "1", "--per-parent", "1",
                 "--dsn", dsn, cwd=tmp_path))
    assert cut.splitlines() == [
        "o  succeeded  flow", "  k1  running  child", "    ... 1 more", "  ... 1 more"]
    data = json.loads(ok(cli("workflows", "tree", "o", "--json", "--dsn", dsn, cwd=tmp_path)))
    assert data["id"] == "o" and data["more"] == 0
    assert [(c["id"], c["status"], [g["id"] for g in c["children"]])
            for c in data["children"]] == [("k1", "running", ["k1a"]), ("k2", "succeeded", [])]
    assert "'nope' does not exist" in one_line_error(
        cli("workflows", "tree", "nope", "--dsn", dsn, cwd=tmp_path), exit_code=None)


def test_list_parent_and_show_children(tree: Conn, dsn: str, tmp_path: Path) -> None:
    data = json.loads(ok(cli("workflows", "list", "--parent", "o", "--json", "--dsn", dsn,
                             cwd=tmp_path)))
    assert sorted((r["id"], r["parent_id"]) for r in data) == [("k1", "o"), ("k2", "o")]
    shown = ok(cli("workflows", "show", "o", "--dsn", dsn, cwd=tmp_path)).splitlines()
    at = shown.index("children: 2")
    assert [line.split() for line in shown[at + 1:]] == [
        ["k1", "running", "child"], ["k2", "succeeded", "child"]]
    assert shown.index("  step   2 started ship  None") < at
    child = json.loads(ok(cli("workflows", "show", "k1", "--json", "--dsn", dsn, cwd=tmp_path)))
    assert child["parent_id"] == "o" and child["more_children"] == 0
    assert child["children"] == [{"id": "k1a", "status": "running", "name": "child"}]


def test_show_counts_the_children_it_leaves_out(conn: Conn, dsn: str, tmp_path: Path) -> None:
    start(conn, "big")
    conn.execute("insert into pgdurable.workflows (id, name, parent_id) "
                 "select 'c' || lpad(i::text, 3, '0'), 'child', 'big' "
                 "from generate_series(1, 25) i")
    shown = ok(cli("workflows", "show", "big", "--dsn", dsn, cwd=tmp_path)).splitlines()
    assert "children: 25" in shown
    assert shown[-1] == "  ... 5 more (pgdurable workflows list --parent big)"
