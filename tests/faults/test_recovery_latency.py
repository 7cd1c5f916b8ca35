"""Dead-worker recovery latency: a worker holding a run is killed with SIGKILL; the run must be
running again on another worker within one lease plus one sweep interval (plus slack for
process scheduling on a busy machine). Measured on the server clock and printed."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.support.processes import Proc, processes
from tests.support.waiting import wait_until

from .helpers import TORTURE_SCHEMA, worker

Conn = psycopg.Connection[Any]
LEASE = 2.0
DAEMON_INTERVAL = 0.5
HEARTBEAT = LEASE / 3  # the App's default: workers sweep once per heartbeat period
SLACK = 1.5
ROUNDS = 2


def hold_starts(conn: Conn, tag: str) -> list[tuple[int, datetime]]:
    rows = conn.execute("select pid, started from torture_holds where tag = %s order by id",
                        (tag,)).fetchall()
    return [(int(pid), started) for pid, started in rows]


def listening(conn: Conn, label: str) -> bool:
    """The worker `label` is up: its listener is connected."""
    row = conn.execute("select count(*) from pg_stat_activity where application_name = %s "
                       "and query = 'listen pgdurable'", (label,)).fetchone()
    return bool(row and row[0])


def enqueue_hold(conn: Conn, tag: str) -> None:
    conn.execute("select pgdurable.enqueue('torture', 'torture.hold', %s, %s)",
                 (Jsonb({"args": [tag], "kwargs": {}}), f"hold-{tag}"))


def status(conn: Conn, wid: str) -> str | None:
    row = conn.execute("select status from pgdurable.workflows where id = %s", (wid,)).fetchone()
    return None if row is None else str(row[0])


def one_round(dsn: str, conn: Conn, tmp_path: Path, procs: list[Proc], holder: Proc, n: int,
              args: tuple[str, ...], env: dict[str, str]) -> tuple[Proc, float]:
    """The holder runs a hold; a standby waits; kill -9 the holder and time until the hold
    starts again on the standby. Returns the standby (the next holder) and the seconds."""
    tag = f"t{n}"
    enqueue_hold(conn, tag)
    wait_until(lambda: hold_starts(conn, tag), timeout=30, what="the hold to start")
    assert hold_starts(conn, tag)[0][0] == holder.pid
    standby = worker(dsn, tmp_path, f"w{n + 1}", *args, **env)
    procs.append(standby)
    wait_until(lambda: listening(conn, standby.label), timeout=60, what="the standby worker")

    holder.kill()
    row = conn.execute("select clock_timestamp()").fetchone()
    assert row is not None
    killed_at: datetime = row[0]
    wait_until(lambda: len(hold_starts(conn, tag)) == 2, timeout=LEASE + 30, interval=0.01,
               what="the run to start again")
    pid, started = hold_starts(conn, tag)[1]
    assert pid == standby.pid

    conn.execute("insert into torture_flags values (%s)", (tag,))
    wait_until(lambda: status(conn, f"hold-{tag}") == "succeeded", timeout=30,
               what="the resumed run to finish")
    return standby, (started - killed_at).total_seconds()


@pytest.mark.parametrize("mode", ["daemon", "workers-only"])
def test_a_killed_workers_run_resumes_within_a_lease_and_a_sweep(
    dsn: str, conn: Conn, tmp_path: Path, mode: str
) -> None:
    conn.execute(TORTURE_SCHEMA)
    conn.execute("select pgdurable.declare_queue('torture')")
    env = {"TORTURE_LEASE_SECONDS": str(LEASE)}
    args = ("--queue", "torture", "--concurrency", "1", "--poll-interval", "1")
    interval = DAEMON_INTERVAL if mode == "daemon" else HEARTBEAT
    latencies: list[float] = []
    with processes() as procs:
        if mode == "daemon":
            procs.append(Proc(dsn, tmp_path, "daemon", "recover", "--interval",
                              str(DAEMON_INTERVAL)))
        holder = worker(dsn, tmp_path, "w0", *args, **env)
        procs.append(holder)
        wait_until(lambda: listening(conn, "w0"), timeout=60, what="the first worker")
        for n in range(ROUNDS):
            holder, seconds = one_round(dsn, conn, tmp_path, procs, holder, n, args, env)
            latencies.append(seconds)

    bound = LEASE + interval
    shown = ", ".join(f"{s:.2f}s" for s in latencies)
    print(f"recovery latency ({mode}, lease {LEASE}s, sweep every {interval:.2f}s): {shown} "
          f"(bound {bound:.2f}s + {SLACK}s slack)")
    assert all(0 < s <= bound + SLACK for s in latencies), shown
