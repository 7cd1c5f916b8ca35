"""The `pgdurable` command line, run as a real subprocess against real databases."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import click
import psycopg
import pytest
from psycopg.types.json import Jsonb

import pgdurable
from pgdurable.cli import main as cli_main
from pgdurable.store import migrate
from tests.support.processes import cli as run_cli
from tests.support.processes import one_line_error as one_error_line

UNREACHABLE = "postgresql://x@127.0.0.1:1/x"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


def cli(
    *args: str, cwd: Path, dsn_env: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """The CLI with no configuration but `dsn_env` as PGDURABLE_DSN (no libpq PG* variables,
    an embedded server's data directory that stays unused)."""
    return run_cli(dsn_env, *args, cwd=cwd, timeout=timeout, libpq=False,
                   PGDURABLE_DATA_DIR=str(cwd / ".pgdurable-unused"), NO_COLOR="1")


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """Assert the CLI failed the friendly way and return the error line."""
    return one_error_line(result, exit_code=None)


# -- migrate ----------------------------------------------------------------------------------


def test_migrate_applies_then_reports_up_to_date(empty_dsn: str, workdir: Path) -> None:
    first = ok(cli("migrate", "--dsn", empty_dsn, cwd=workdir))
    assert first.splitlines() == [f"applied {m.filename}" for m in migrate.available()] + [
        f"applied {f.filename}" for f in migrate.function_files()]
    second = ok(cli("migrate", "--dsn", empty_dsn, cwd=workdir))
    assert second.strip() == f"schema is up to date (version {migrate.latest_version()})"
    with psycopg.connect(empty_dsn) as conn:
        migrate.check_schema(conn)


def test_migrate_show_sql_does_not_connect(workdir: Path) -> None:
    out = ok(cli("migrate", "--show-sql", "--dsn", UNREACHABLE, cwd=workdir))
    assert out == migrate.full_sql() + "\n"
    assert "create function pgdurable.start_workflow" in out
    assert not (workdir / ".pgdurable-unused").exists()  # no embedded server either


def test_migrate_show_sql_is_valid_sql(empty_dsn: str, workdir: Path) -> None:
    out = ok(cli("migrate", "--show-sql", cwd=workdir))
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute(out.encode())
        assert conn.execute("select to_regclass('pgdurable.workflows')").fetchone() == (
            "pgdurable.workflows",)


@pytest.mark.parametrize(
    "args",
    [
        ("migrate",),
        ("workflows", "list"),
        ("workflows", "show", "x"),
        ("workflows", "cancel", "x"),
    ],
)
def test_an_unreachable_server_is_one_line(args: tuple[str, ...], workdir: Path) -> None:
    result = cli(*args, "--dsn", UNREACHABLE, cwd=workdir)
    line = one_line_error(result)
    assert "cannot connect to PostgreSQL" in line
    assert "127.0.0.1" in line
    assert result.stdout == ""


def test_an_unmigrated_database_is_a_one_line_error(empty_dsn: str, workdir: Path) -> None:
    one_line_error(cli("workflows", "list", "--dsn", empty_dsn, cwd=workdir))


def test_an_unmigrated_database_says_run_migrate(empty_dsn: str, workdir: Path) -> None:
    line = one_line_error(cli("workflows", "list", "--dsn", empty_dsn, cwd=workdir))
    assert "pgdurable migrate" in line


# -- workflows --------------------------------------------------------------------------------


@pytest.fixture
def runs(app: pgdurable.App, dsn: str) -> Iterator[dict[str, str]]:
    """A succeeded run with one step (made by an App in this process) and a running one
    owned by another worker."""

    @app.step(name="shout")
    def shout(text: str) -> str:
        return text.upper()

    @app.workflow(name="greet")
    def greet(name: str) -> str:
        return shout(f"hello {name}") + "!"

    assert app.start(greet, "ada", workflow_id="done-1").result(timeout=30) == "HELLO ADA!"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "select * from pgdurable.start_workflow('live-1', 'greet', %s, 'elsewhere', 300)",
            (Jsonb({"args": ["bob"], "kwargs": {}}),),
        )
    yield {"done": "done-1", "live": "live-1"}


def test_workflows_list_json(runs: dict[str, str], dsn: str, workdir: Path) -> None:
    data = json.loads(ok(cli("workflows", "list", "--json", "--dsn", dsn, cwd=workdir)))
    by_id = {r["id"]: r for r in data}
    assert set(by_id) == {"done-1", "live-1"}
    assert by_id["done-1"]["status"] == "succeeded"
    assert by_id["done-1"]["output"] == "HELLO ADA!"
    assert by_id["done-1"]["inputs"] == {"args": ["ada"], "kwargs": {}}
    assert by_id["live-1"]["status"] == "running"
    assert by_id["live-1"]["owner"] == "elsewhere"
    assert by_id["live-1"]["attempt"] == 1
    assert all(r["name"] == "greet" for r in data)


def test_workflows_list_filters(runs: dict[str, str], dsn: str, workdir: Path) -> None:
    only = json.loads(ok(cli("workflows", "list", "--json", "--status", "running",
                             "--dsn", dsn, cwd=workdir)))
    assert [r["id"] for r in only] == ["live-1"]
    assert json.loads(ok(cli("workflows", "list", "--json", "--name", "other",
                             "--dsn", dsn, cwd=workdir))) == []
    assert len(json.loads(ok(cli("workflows", "list", "--json", "--limit", "1",
                                 "--dsn", dsn, cwd=workdir)))) == 1
    bad = cli("workflows", "list", "--status", "bogus", "--dsn", dsn, cwd=workdir)
    assert bad.returncode == 2 and "bogus" in bad.stderr


def test_workflows_list_text(runs: dict[str, str], dsn: str, workdir: Path) -> None:
    lines = ok(cli("workflows", "list", "--dsn", dsn, cwd=workdir)).splitlines()
    assert lines[0].split()[:3] == ["ID", "STATUS", "EPOCH"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["done-1"][1] == "succeeded"
    assert rows["live-1"][1:3] == ["running", "1"]
    assert rows["live-1"][-1] == "greet"


def test_workflows_list_when_empty(dsn: str, workdir: Path) -> None:
    assert ok(cli("workflows", "list", "--dsn", dsn, cwd=workdir)).strip() == "no workflows"
    assert json.loads(ok(cli("workflows", "list", "--json", "--dsn", dsn, cwd=workdir))) == []


def test_workflows_show_json(runs: dict[str, str], dsn: str, workdir: Path) -> None:
    data = json.loads(ok(cli("workflows", "show", "done-1", "--json", "--dsn", dsn,
                             cwd=workdir)))
    assert data["id"] == "done-1"
    assert data["status"] == "succeeded"
    assert data["output"] == "HELLO ADA!"
    assert [(s["step_no"], s["name"], s["status"], s["output"]) for s in data["steps"]] == [
        (0, "shout", "done", "HELLO ADA")]


def test_workflows_show_text(runs: dict[str, str], dsn: str, workdir: Path) -> None:
    out = ok(cli("workflows", "show", "done-1", "--dsn", dsn, cwd=workdir))
    assert "status:   succeeded" in out
    assert 'output:   "HELLO ADA!"' in out
    assert "shout" in out and '"HELLO ADA"' in out


def test_workflows_show_unknown_id(dsn: str, workdir: Path) -> None:
    line = one_line_error(cli("workflows", "show", "nope", "--json", "--dsn", dsn, cwd=workdir))
    assert "'nope' does not exist" in line


def test_workflows_cancel(runs: dict[str, str], dsn: str, workdir: Path) -> None:
    assert ok(cli("workflows", "cancel", "live-1", "--dsn", dsn, cwd=workdir)).strip() == (
        "live-1: cancelled")
    assert ok(cli("workflows", "cancel", "done-1", "--dsn", dsn, cwd=workdir)).strip() == (
        "done-1: succeeded")
    with psycopg.connect(dsn) as conn:
        cur = conn.execute("select id, status from pgdurable.workflows")
        rows: dict[str, str] = dict(cur.fetchall())
    assert rows == {"live-1": "cancelled", "done-1": "succeeded"}
    line = one_line_error(cli("workflows", "cancel", "nope", "--dsn", dsn, cwd=workdir))
    assert "'nope' does not exist" in line


def test_workflows_cancel_cascades_unless_no_cascade(runs: dict[str, str], dsn: str,
                                                      workdir: Path) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for wid, parent in (("kid-1", "live-1"), ("kid-2", "kid-1"), ("solo-kid", "done-1")):
            conn.execute("select pgdurable.enqueue('default', 'greet', p_id => %s)", (wid,))
            conn.execute("update pgdurable.workflows set parent_id = %s where id = %s",
                         (parent, wid))
    assert ok(cli("workflows", "cancel", "kid-1", "--no-cascade", "--dsn", dsn,
                  cwd=workdir)).strip() == "kid-1: cancelled"
    assert ok(cli("workflows", "cancel", "live-1", "--dsn", dsn, cwd=workdir)).strip() == (
        "live-1: cancelled")
    with psycopg.connect(dsn) as conn:
        rows: dict[str, str] = dict(conn.execute(
            "select id, status from pgdurable.workflows").fetchall())
    assert rows == {"live-1": "cancelled", "done-1": "succeeded", "kid-1": "cancelled",
                    "kid-2": "cancelled", "solo-kid": "pending"}


RESUMABLE = '''
import pgdurable

app = pgdurable.App()


@app.workflow(name="resumable")
def resumable(x: int) -> int:
    return x * 2
'''


def test_workflows_resume_with_an_app(dsn: str, conn: psycopg.Connection[object],
                                      workdir: Path) -> None:
    (workdir / "resumable_app.py").write_text(RESUMABLE)
    conn.execute("select * from pgdurable.start_workflow('r1', 'resumable', %s, 'dead', 30)",
                 (Jsonb({"args": [21], "kwargs": {}}),))
    conn.execute("select pgdurable.finish_workflow('r1', 1, 'failed', null, %s)",
                 (Jsonb({"type": "RuntimeError", "message": "crash"}),))
    out = ok(cli("workflows", "resume", "--app", "resumable_app:app", "r1", "--dsn", dsn,
                 cwd=workdir))
    assert out.strip() == "r1: succeeded"
    assert conn.execute("select status, output, attempt, error from pgdurable.workflows "
                        "where id = 'r1'").fetchone() == ("succeeded", 42, 2, None)


def test_workflows_resume_with_a_missing_app_module(dsn: str, workdir: Path) -> None:
    line = one_line_error(cli("workflows", "resume", "--app", "no_such_module:app", "r1",
                              "--dsn", dsn, cwd=workdir))
    assert "no_such_module" in line


# -- configuration ----------------------------------------------------------------------------


def test_pgdurable_dsn_env_var_replaces_the_option(
    runs: dict[str, str], dsn: str, workdir: Path
) -> None:
    data = json.loads(ok(cli("workflows", "list", "--json", cwd=workdir, dsn_env=dsn)))
    assert {r["id"] for r in data} == {"done-1", "live-1"}
    shown = json.loads(ok(cli("workflows", "show", "done-1", "--json", cwd=workdir,
                              dsn_env=dsn)))
    assert shown["status"] == "succeeded"
    assert not (workdir / ".pgdurable-unused").exists()  # the embedded server was not used


def test_pgdurable_dsn_env_var_for_migrate(empty_dsn: str, workdir: Path) -> None:
    out = ok(cli("migrate", cwd=workdir, dsn_env=empty_dsn))
    assert out.splitlines()[0] == f"applied {migrate.available()[0].filename}"


def test_the_dsn_option_wins_over_the_env_var(dsn: str, workdir: Path) -> None:
    out = ok(cli("workflows", "list", "--dsn", dsn, cwd=workdir, dsn_env=UNREACHABLE))
    assert out.strip() == "no workflows"
    line = one_line_error(cli("workflows", "list", cwd=workdir, dsn_env=UNREACHABLE))
    assert "cannot connect" in line


def _leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for name, command in sorted(group.commands.items()):
        path = (*prefix, name)
        if isinstance(command, click.Group):
            found.extend(_leaf_commands(command, path))
        else:
            found.append(path)
    return found


COMMANDS = _leaf_commands(cli_main)
# Commands that never connect to a configured database.
NO_DSN = {("dev",)}


def test_the_command_tree_is_what_these_tests_expect() -> None:
    assert {("migrate",), ("dev",), ("workflows", "list"), ("workflows", "show"),
            ("workflows", "cancel"), ("workflows", "resume")} <= set(COMMANDS)


@pytest.mark.parametrize("command", [c for c in COMMANDS if c not in NO_DSN], ids=" ".join)
def test_help_shows_the_dsn_env_var(command: tuple[str, ...], workdir: Path) -> None:
    out = ok(cli(*command, "--help", cwd=workdir))
    flat = " ".join(out.split())
    assert "--dsn" in flat
    assert "env var: PGDURABLE_DSN" in flat


def test_top_level_help_and_version(workdir: Path) -> None:
    out = ok(cli("--help", cwd=workdir))
    for name in ("migrate", "workflows", "dev"):
        assert name in out
    assert pgdurable.__version__ in ok(cli("--version", cwd=workdir))


def _options_without_env_var() -> list[str]:
    missing: list[str] = []
    for command in COMMANDS:
        cmd: click.Command = cli_main
        for name in command:
            assert isinstance(cmd, click.Group)
            cmd = cmd.commands[name]
        for param in cmd.params:
            if isinstance(param, click.Option) and param.name != "help" and not (
                    param.show_envvar and param.envvar):
                missing.append(f"{' '.join(command)} {param.opts[0]}")
    return missing


def test_every_option_shows_an_env_var() -> None:
    assert _options_without_env_var() == []
