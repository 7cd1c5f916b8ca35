"""Many runs in a process killed at a random moment: none is lost, none is doubled."""

from __future__ import annotations

import random
import time
from functools import partial

import psycopg
import pytest

from tests.support.processes import processes
from tests.support.waiting import wait_until

from .helpers import all_leases_expired, pipeline, run_states, shipments_per_order

Conn = psycopg.Connection[tuple[object, ...]]


def has_worked(conn: Conn, pid: int) -> bool:
    row = conn.execute("select exists (select from fault_events where pid = %s)", (pid,))
    return row.fetchone() == (True,)


def kill_and_recover(dsn: str, conn: Conn, runs: int, kills: int, seed: int) -> None:
    rng = random.Random(seed)
    order_ids = [f"m{i:03d}" for i in range(runs)]
    knobs = {"FAULT_RESERVE_SECONDS": "0", "FAULT_CHARGE_SECONDS": "0.1", "FAULT_JITTER": "0.4"}
    killed_mid_run = 0
    with processes() as procs:
        for _ in range(kills):
            worker = pipeline(dsn, "checkout", *order_ids, **knobs)
            procs.append(worker)
            wait_until(partial(has_worked, conn, worker.proc.pid),
                       what="the worker to start working")
            time.sleep(rng.uniform(0.0, 0.5))
            worker.kill()
            states = run_states(conn)
            killed_mid_run += sum(status == "running" for status, _ in states.values())
            wait_until(lambda: all_leases_expired(conn), what="the dead worker's leases")
        last = pipeline(dsn, "checkout", *order_ids, **knobs)
        procs.append(last)
        results = last.finish(timeout=120)

    context = f"seed {seed}"
    assert killed_mid_run > 0, f"no run was cut off by a kill ({context})"
    assert sorted(results) == [f"checkout-{o}" for o in order_ids], context
    states = run_states(conn)
    assert len(states) == runs, context  # zero lost
    assert {status for status, _ in states.values()} == {"succeeded"}, context
    assert shipments_per_order(conn) == dict.fromkeys(order_ids, 1), context  # exactly once
    for order_id in order_ids:
        receipt = results[f"checkout-{order_id}"]
        assert receipt["charge_id"] == f"ch-{order_id}", context
    rows = conn.execute(
        "select order_id, event, count(*) from fault_events group by order_id, event"
    ).fetchall()
    counts = {(o, e): n for o, e, n in rows}
    for order_id in order_ids:
        # Plain steps run at least once; duplicates are allowed (and counted).
        assert counts.get((order_id, "reserve"), 0) >= 1, context
        assert counts.get((order_id, "charge:start"), 0) >= 1, context
        assert counts.get((order_id, "ship:body"), 0) >= 1, context
    duplicates = sum(n - 1 for (_, event), n in counts.items() if event == "charge:start")
    # Each kill can cut off each run's charge at most once.
    assert duplicates <= runs * kills, context
    # The recorded outputs are the ones every process returned.
    shipment_ids = dict(conn.execute("select order_id, id from fault_shipments").fetchall())
    for order_id in order_ids:
        assert results[f"checkout-{order_id}"]["shipment_id"] == shipment_ids[order_id], context


def test_twenty_runs_survive_a_kill_at_a_random_moment(fault_db: str, conn: Conn) -> None:
    kill_and_recover(fault_db, conn, runs=20, kills=1, seed=random.randrange(1 << 30))


@pytest.mark.slow
def test_two_hundred_runs_survive_repeated_kills(fault_db: str, conn: Conn) -> None:
    kill_and_recover(fault_db, conn, runs=200, kills=4, seed=random.randrange(1 << 30))
