"""Two `pgdurable recover` daemons: one leads; kill -9 the leader and the other takes over
within one sweep interval (plus slack), and goes on recovering runs. Repeated with the killed
daemon restarted each time."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import psycopg

from tests.support.processes import LEADER_KEY, Proc, holder_of, processes, wait_for_holder
from tests.support.waiting import wait_until

Conn = psycopg.Connection[Any]
INTERVAL = 0.5
SLACK = 1.5
ROUNDS = 2


def expired_run(conn: Conn, wid: str) -> None:
    """A run whose worker died at once: its lease is already over."""
    conn.execute("select pgdurable.enqueue('default', %s, p_id => %s)", (wid, wid))
    rows = conn.execute("select id from pgdurable.claim('dead', array['default'], 1, 0.001, "
                        "array[%s])", (wid,)).fetchall()
    assert [r[0] for r in rows] == [wid]
    conn.execute("select pg_sleep(0.01)")


def is_pending(conn: Conn, wid: str) -> bool:
    row = conn.execute("select status from pgdurable.workflows where id = %s", (wid,)).fetchone()
    return row == ("pending",)


def _new_holder(conn: Conn, old: str) -> str | None:
    holder = holder_of(conn, LEADER_KEY)
    return holder if holder not in (None, old) else None


def logged(proc: Proc, text: str) -> bool:
    return text in proc.stderr()


def test_kill_the_leader_and_the_standby_takes_over(dsn: str, conn: Conn, tmp_path: Path) -> None:
    takeovers: list[float] = []
    generation = 0

    def daemon(procs: list[Proc]) -> Proc:
        nonlocal generation
        generation += 1
        proc = Proc(dsn, tmp_path, f"daemon-{generation}", "recover", "--interval", str(INTERVAL))
        procs.append(proc)
        return proc

    with processes() as procs:
        daemons = {p.label: p for p in (daemon(procs), daemon(procs))}
        for n in range(ROUNDS):
            current = wait_for_holder(conn, LEADER_KEY)
            wait_until(lambda: len({a for (a,) in conn.execute(
                "select application_name from pg_stat_activity where datname = "
                "current_database() and application_name like 'daemon-%'")}) == 2,
                timeout=60, what="both daemons to be connected")
            leader = daemons.pop(current)
            leader.kill()
            killed_at = time.monotonic()
            # The killed daemon's backend holds the lock until the server notices it is gone.
            successor = wait_until(functools.partial(_new_holder, conn, current), timeout=30,
                                   interval=0.005, what="a new holder of the lock")
            takeovers.append(time.monotonic() - killed_at)
            assert successor in daemons, f"{successor} leads, expected one of {set(daemons)}"

            expired_run(conn, f"orphan-{n}")
            wait_until(functools.partial(is_pending, conn, f"orphan-{n}"), timeout=10,
                       what="the new leader to requeue the orphan")
            wait_until(functools.partial(logged, daemons[successor],
                                         "recovery daemon is now the leader"),
                       timeout=10, what="the takeover to be logged")
            replacement = daemon(procs)  # restart the killed one
            daemons[replacement.label] = replacement
        for proc in daemons.values():
            assert proc.alive(), proc.stderr()

    shown = ", ".join(f"{s:.2f}s" for s in takeovers)
    print(f"leader takeover after kill -9 (interval {INTERVAL}s): {shown}")
    assert all(s <= INTERVAL + SLACK for s in takeovers), shown
