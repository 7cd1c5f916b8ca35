"""Real processes: the `pgdurable` CLI, workers and the test apps (tests/support/apps, imported as
`apps.<module>`: the processes run in tests/support), and the sessions they leave in the
database (advisory lock holders, backends by application_name)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import psycopg

from .waiting import wait_until

Conn = psycopg.Connection[Any]

# The processes' working directory: `apps.<module>` imports from there.
HERE = Path(__file__).resolve().parent
# The advisory lock the recovery leader holds (sql/queries.sql: recovery_leader_lock).
LEADER_KEY = 7301544015412283462


def clean_env(dsn: str | None, *, libpq: bool = True, **extra: str) -> dict[str, str]:
    """This process's environment without PGDURABLE_* settings (nor libpq's PG* ones unless
    `libpq`), with PGDURABLE_DSN = `dsn` if given, unbuffered output and wide tables."""
    prefix = "PGDURABLE" if libpq else "PG"
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefix)}
    env.update({"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(HERE), "COLUMNS": "200", **extra})
    if dsn is not None:
        env["PGDURABLE_DSN"] = dsn
    return env


def cli(dsn: str | None, *args: str, cwd: Path = HERE, timeout: float = 60.0, libpq: bool = True,
        **env: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m pgdurable.cli ARGS...` against `dsn` and wait for it."""
    return subprocess.run([sys.executable, "-m", "pgdurable.cli", *args], cwd=cwd,
                          env=clean_env(dsn, libpq=libpq, **env), capture_output=True,
                          text=True, timeout=timeout, check=False)


def one_line_error(result: subprocess.CompletedProcess[str], exit_code: int | None = 1) -> str:
    """Assert the CLI failed the friendly way (exit `exit_code`, or any non-zero one with
    None; one `Error:` line on stderr, no traceback) and return that line."""
    if exit_code is None:
        assert result.returncode != 0, result.stdout
    else:
        assert result.returncode == exit_code, (
            f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error:"), lines[0]
    return lines[0]


class _Closable(Protocol):
    def close(self) -> None: ...


@contextmanager
def processes() -> Iterator[list[Any]]:
    """Collects processes (Proc, Piped) and kills any still alive when the test ends."""
    started: list[_Closable] = []
    try:
        yield started
    finally:
        for proc in started:
            proc.close()


class Proc:
    """A long-running `python -m pgdurable.cli ...` process whose output goes to files (appended
    to, so a restarted label keeps one log), readable while it runs; no pipe fills up. Its
    sessions carry application_name `label`."""

    def __init__(self, dsn: str, logdir: Path, label: str, *args: str, **env: str) -> None:
        self.label = label
        self.out_path = logdir / f"{label}.out"
        self.err_path = logdir / f"{label}.err"
        self._out = self.out_path.open("a")
        self._err = self.err_path.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pgdurable.cli", *args], cwd=HERE,
            env=clean_env(dsn, PGAPPNAME=label, **env), stdout=self._out, stderr=self._err,
            stdin=subprocess.DEVNULL,
        )
        self.pid = self.proc.pid

    def stdout(self) -> str:
        return self.out_path.read_text()

    def stderr(self) -> str:
        return self.err_path.read_text()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """kill -9: no cleanup, no lease release, nothing."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        assert self.proc.returncode == -signal.SIGKILL

    def terminate(self, timeout: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout=timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self._out.close()
        self._err.close()


class Piped:
    """A `python ARGS...` process (cwd tests/support) whose output is read when it ends."""

    def __init__(self, dsn: str, *args: str, **env: str) -> None:
        full_env = {**os.environ, "PGDURABLE_DSN": dsn, "PYTHONUNBUFFERED": "1",
                    "PYTHONPATH": str(HERE), **env}
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, *args], cwd=HERE, env=full_env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        self.pid = self.proc.pid

    def wait(self, timeout: float = 30.0) -> tuple[int, str, str]:
        """Its exit code, stdout and stderr, once it exits."""
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def finish(self, timeout: float = 90) -> dict[str, Any]:
        """Wait for a clean exit and return the JSON object it printed last."""
        code, out, err = self.wait(timeout)
        assert code == 0, f"exit {code}\n{out}\n{err}"
        return dict(json.loads(out.strip().splitlines()[-1]))

    def kill(self) -> None:
        """SIGKILL: no cleanup, no lease release, nothing."""
        self.proc.kill()
        out, err = self.proc.communicate(timeout=30)
        assert self.proc.returncode == -9, f"exit {self.proc.returncode}\n{out}\n{err}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=30)


def worker_process(dsn: str, app: str, *args: str, **env: str) -> Piped:
    """`pgdurable worker APP ARGS...` (APP as `apps.<module>:<name>`)."""
    return Piped(dsn, "-m", "pgdurable.cli", "worker", app, *args, **env)


# -- sessions in the database ---------------------------------------------------------------------


def holder_of(conn: Conn, key: int) -> str | None:
    """application_name of the session holding advisory lock `key` in this database."""
    row = conn.execute(
        "select a.application_name from pg_locks l join pg_stat_activity a using (pid) "
        "where l.locktype = 'advisory' and l.granted and l.classid = %s and l.objid = %s "
        "and l.objsubid = 1 "
        "and l.database = (select oid from pg_database where datname = current_database())",
        (key >> 32, key & 0xFFFFFFFF),
    ).fetchone()
    return None if row is None else str(row[0])


def wait_for_holder(conn: Conn, key: int, timeout: float = 60.0, interval: float = 0.02) -> str:
    """Wait until some session holds advisory lock `key`; its application_name."""
    name = wait_until(lambda: holder_of(conn, key), timeout=timeout, interval=interval,
                      what="a holder of the lock")
    assert name is not None
    return name


def leader(conn: Conn) -> str | None:
    """The application_name of the session holding the recovery leader lock here."""
    return holder_of(conn, LEADER_KEY)


def wait_for_leader(conn: Conn, timeout: float = 20.0) -> str:
    """Wait until some session holds the leader lock; its application_name."""
    return wait_for_holder(conn, LEADER_KEY, timeout=timeout)


def backends(conn: Conn, application_name: str) -> list[int]:
    rows = conn.execute("select pid from pg_stat_activity where application_name = %s "
                        "and datname = current_database()", (application_name,))
    return [int(r[0]) for r in rows]


def terminate(conn: Conn, application_name: str) -> int:
    """pg_terminate_backend every session of that application name in this database."""
    pids = backends(conn, application_name)
    for pid in pids:
        conn.execute("select pg_terminate_backend(%s)", (pid,))
    return len(pids)
