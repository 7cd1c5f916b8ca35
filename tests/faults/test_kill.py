"""kill -9 and hard crashes of real worker processes, then takeover by another process."""

from __future__ import annotations

import psycopg

from tests.support.processes import processes
from tests.support.waiting import wait_until

from .helpers import (
    all_leases_expired,
    events,
    has_event,
    pipeline,
    run_states,
    shipments_per_order,
)

Conn = psycopg.Connection[tuple[object, ...]]


def test_kill_during_step_two_then_another_process_finishes(fault_db: str, conn: Conn) -> None:
    with processes() as procs:
        first = pipeline(fault_db, "checkout", "k1", FAULT_CHARGE_SECONDS="60")
        procs.append(first)
        wait_until(lambda: has_event(conn, "k1", "charge:start"), what="step 2 to start")
        first.kill()
        assert run_states(conn) == {"checkout-k1": ("running", 1)}
        steps = conn.execute("select step_no, status from pgdurable.steps").fetchall()
        assert steps == [(0, "done")]

        wait_until(lambda: all_leases_expired(conn), what="the dead process's lease to expire")
        second = pipeline(fault_db, "checkout", "k1")
        procs.append(second)
        results = second.finish()

    assert results["checkout-k1"]["charge_id"] == "ch-k1"
    assert run_states(conn) == {"checkout-k1": ("succeeded", 2)}
    counts = events(conn, "k1")
    assert counts["reserve"] == 1  # replayed from its checkpoint
    assert counts["charge:start"] == 2  # at least once: the killed body ran again
    assert counts["charge:done"] == 1
    assert counts["ship:body"] == 1
    assert shipments_per_order(conn) == {"k1": 1}
    attempts = conn.execute("select attempt from pgdurable.steps order by step_no").fetchall()
    assert attempts == [(1,), (2,), (2,)]


def test_crash_between_transaction_commit_and_return(fault_db: str, conn: Conn) -> None:
    with processes() as procs:
        first = pipeline(fault_db, "checkout", "c1", FAULT_CRASH_AFTER_SHIP_COMMIT="1")
        procs.append(first)
        code, out, err = first.wait(timeout=60)
        assert code == 9, f"{out}\n{err}"
        assert "crashing right after the ship commit" in out
        # The ship step's row and checkpoint are committed; the run was never finished.
        assert run_states(conn) == {"checkout-c1": ("running", 1)}
        assert shipments_per_order(conn) == {"c1": 1}
        assert [s for (s,) in conn.execute(
            "select status from pgdurable.steps order by step_no").fetchall()] == ["done"] * 3

        wait_until(lambda: all_leases_expired(conn), what="the dead process's lease to expire")
        second = pipeline(fault_db, "checkout", "c1")
        procs.append(second)
        results = second.finish()

    assert results["checkout-c1"]["shipment_id"] > 0
    assert run_states(conn) == {"checkout-c1": ("succeeded", 2)}
    assert shipments_per_order(conn) == {"c1": 1}  # exactly once
    assert events(conn, "c1") == {"reserve": 1, "charge:start": 1, "charge:done": 1,
                                  "ship:body": 1}


def test_crash_before_transaction_commit_rolls_back_row_and_checkpoint(
    fault_db: str, conn: Conn
) -> None:
    with processes() as procs:
        first = pipeline(fault_db, "checkout", "b1", FAULT_CRASH_BEFORE_SHIP_COMMIT="1")
        procs.append(first)
        code, out, err = first.wait(timeout=60)
        assert code == 9, f"{out}\n{err}"
        assert "crashing right before the ship commit" in out
        # Neither the business row nor the ship checkpoint survived: they were one transaction.
        assert shipments_per_order(conn) == {}
        assert [s for (s,) in conn.execute(
            "select status from pgdurable.steps order by step_no").fetchall()] == ["done"] * 2

        wait_until(lambda: all_leases_expired(conn), what="the dead process's lease to expire")
        second = pipeline(fault_db, "checkout", "b1")
        procs.append(second)
        results = second.finish()

    assert run_states(conn) == {"checkout-b1": ("succeeded", 2)}
    assert shipments_per_order(conn) == {"b1": 1}
    [(shipment_id,)] = conn.execute("select id from fault_shipments").fetchall()
    assert results["checkout-b1"]["shipment_id"] == shipment_id
    assert events(conn, "b1") == {"reserve": 1, "charge:start": 1, "charge:done": 1,
                                  "ship:body": 2}


def test_kill_during_an_at_most_once_step(fault_db: str, conn: Conn) -> None:
    with processes() as procs:
        first = pipeline(fault_db, "notify", "m1", FAULT_EMAIL_SECONDS="60")
        procs.append(first)
        wait_until(lambda: has_event(conn, "m1", "email:start"), what="the email step to start")
        first.kill()
        wait_until(lambda: all_leases_expired(conn), what="the dead process's lease to expire")
        second = pipeline(fault_db, "notify", "m1")
        procs.append(second)
        results = second.finish()

    assert results == {"notify-m1": "flagged for review"}
    assert events(conn, "m1") == {"email:start": 1, "flag": 1}  # never sent twice
    assert run_states(conn) == {"notify-m1": ("succeeded", 2)}
