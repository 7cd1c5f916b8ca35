"""kill -9 of the worker in the middle of a fan-out: another worker finishes the run, every
child was started exactly once, each child's step effect happened at least once, and the parent
was woken by the last child's commit."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.support.processes import Proc, processes
from tests.support.waiting import wait_until

Conn = psycopg.Connection[tuple[object, ...]]
FANOUT_SCHEMA = "create table fan_effects (workflow_id text not null, n integer not null)"
CHILDREN = 200


def succeeded_children(conn: Conn) -> int:
    row = conn.execute("select count(*) from pgdurable.workflows where parent_id = 'fan' "
                       "and status = 'succeeded'").fetchone()
    assert row is not None
    return int(row[0])


def test_a_killed_worker_mid_fan_out_duplicates_no_child(dsn: str, conn: Conn, tmp_path: Path
                                                         ) -> None:
    conn.execute(FANOUT_SCHEMA)
    conn.execute("select pgdurable.declare_queue('fan')")
    conn.execute("select pgdurable.enqueue('fan', 'fanout.parent', %s, 'fan')",
                 (Jsonb({"args": [CHILDREN], "kwargs": {}}),))
    with processes() as procs:
        first = Proc(dsn, tmp_path, "fan-1", "worker", "apps.fanout:app", "--concurrency", "8",
                     FANOUT_KID_SECONDS="0.02")
        procs.append(first)
        wait_until(lambda: succeeded_children(conn) >= CHILDREN // 4, timeout=60,
                   what="a quarter of the children to finish")
        first.kill()
        done_at_kill = succeeded_children(conn)
        assert done_at_kill < CHILDREN, "the fan-out finished before the kill: make it slower"
        second = Proc(dsn, tmp_path, "fan-2", "worker", "apps.fanout:app", "--concurrency", "8")
        procs.append(second)
        wait_until(lambda: conn.execute("select status from pgdurable.workflows where id = 'fan'"
                                        ).fetchone() == ("succeeded",),
                   timeout=90, what="the parent to finish")
    output = conn.execute("select output from pgdurable.workflows where id = 'fan'").fetchone()
    assert output == (sum(i * i for i in range(CHILDREN)),)
    kids = conn.execute("select id, status from pgdurable.workflows where parent_id = 'fan' "
                        "order by id").fetchall()
    assert sorted(k for k, _ in kids) == sorted(f"fan:0:{i}" for i in range(CHILDREN))
    assert {s for _, s in kids} == {"succeeded"}
    effects = conn.execute("select workflow_id, count(*) from fan_effects group by 1"
                           ).fetchall()
    assert len(effects) == CHILDREN  # every child's effect happened
    repeated = sum(int(str(c)) - 1 for _, c in effects)
    assert repeated <= 8, f"{repeated} effects ran twice: more than the 8 slots in flight"
    steps = conn.execute("select name from pgdurable.steps where workflow_id = 'fan' "
                         "order by step_no").fetchall()
    assert steps == [("pgdurable.children",), ("pgdurable.gather",)]


@pytest.mark.slow
def test_ten_thousand_children_join(dsn: str, conn: Conn, tmp_path: Path) -> None:
    conn.execute(FANOUT_SCHEMA)
    conn.execute("select pgdurable.declare_queue('fan')")
    conn.execute("select pgdurable.enqueue('fan', 'fanout.parent', %s, 'fan')",
                 (Jsonb({"args": [10_000], "kwargs": {}}),))
    with processes() as procs:
        procs.append(Proc(dsn, tmp_path, "fan-big", "worker", "apps.fanout:app",
                          "--concurrency", "16", FANOUT_KID_SECONDS="0"))
        wait_until(lambda: conn.execute("select status from pgdurable.workflows where id = 'fan'"
                                        ).fetchone() == ("succeeded",),
                   timeout=120, what="the parent to finish")
    assert conn.execute("select output from pgdurable.workflows where id = 'fan'").fetchone() \
        == (sum(i * i for i in range(10_000)),)
    assert succeeded_children(conn) == 10_000
    assert conn.execute("select count(distinct workflow_id) from fan_effects").fetchone() \
        == (10_000,)
