"""Measuring for `pgdurable bench`: client and server CPU, percentiles, worker processes."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

# The line naming an exception in a traceback or log ("psycopg.errors.DeadlockDetected: ..."),
# or a log record of level WARNING and up.
_ALARM = re.compile(r"^([a-z_]\w*\.)*[A-Z]\w*(Error|Exception|Detected|Failed|Failure|Violation|"
                    r"Timeout|Unknown)\w*: |\b(WARNING|ERROR|CRITICAL)\b")

Latency = dict[str, float]  # {"p50": ms, "p95": ms, "p99": ms}


class BenchError(Exception):
    """A scenario could not be measured (a worker failed, runs did not finish, ...)."""


@dataclass(frozen=True)
class Measured:
    seconds: float
    cpu_s: float  # client processes: this one and its reaped worker subprocesses
    server_cpu_s: float | None  # the whole PostgreSQL server, when it runs on this machine
    wal_bytes: int


def cpu_seconds() -> float:
    """User + system CPU of this process and of its finished (reaped) children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


_TICK = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name: [state, ppid, ...]."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()


def _is_postgres(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() in ("postgres", "postmaster")
    except OSError:
        return False


def server_cpu_seconds(backend_pid: int) -> float | None:
    """CPU seconds used so far by the PostgreSQL server that runs `backend_pid`, when it runs
    on this machine (else None): its live processes, plus the backends that already exited
    (accounted to the postmaster as reaped children). Counts every database of the server."""
    try:
        if not _is_postgres(backend_pid):
            return None
        postmaster = int(_proc_stat(backend_pid)[1])
        if not _is_postgres(postmaster):
            return None
        ticks = sum(int(v) for v in _proc_stat(postmaster)[11:15])  # utime stime cutime cstime
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = _proc_stat(int(entry.name))
                except (OSError, ValueError):
                    continue  # exited meanwhile
                if fields[1] == str(postmaster):
                    ticks += int(fields[11]) + int(fields[12])
        return ticks / _TICK
    except (OSError, ValueError, IndexError):
        return None


def percentiles(values: Sequence[float]) -> Latency:
    """p50/p95/p99 with linear interpolation (what percentile_cont computes)."""
    ordered = sorted(values)
    if not ordered:
        return {}

    def at(q: float) -> float:
        pos = q * (len(ordered) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(ordered) - 1)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)

    return {"p50": at(0.5), "p95": at(0.95), "p99": at(0.99)}


def db_percentiles(values: Sequence[float] | None) -> Latency:
    if not values or values[0] is None:
        return {}
    return {"p50": values[0], "p95": values[1], "p99": values[2]}


class Processes:
    """Worker subprocesses, each in its own session (so a Ctrl-C reaches only the bench, which
    then stops them), with stderr kept in a temporary file for error messages."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self._procs: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []

    def spawn(self, args: list[str]) -> subprocess.Popen[bytes]:
        err = tempfile.TemporaryFile()
        proc = subprocess.Popen([sys.executable, *args], env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        self._procs.append((proc, err))
        return proc

    def last_error(self, proc: subprocess.Popen[bytes]) -> str:
        """The last line of the process's stderr that names an exception or is a warning
        (else its last line): what a one-line error message can show of why it failed."""
        for p, err in self._procs:
            if p is proc:
                err.seek(0)
                lines = err.read().decode("utf-8", "replace").strip().splitlines()
                alarming = [line for line in lines if _ALARM.search(line)]
                return (alarming or lines or ["(no output)"])[-1].strip()
        return "(unknown process)"

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        """SIGTERM (a pgdurable worker shuts down gracefully), then SIGKILL."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill_all(self) -> None:
        for proc, err in self._procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            err.close()
        self._procs.clear()
