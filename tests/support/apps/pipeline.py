"""The workflows the fault tests run in real processes (that they then kill).

Usage (cwd tests/support, PGDURABLE_DSN set): python -m apps.pipeline checkout ORDER_ID...
    or python -m apps.pipeline notify ORDER_ID
Starts (or takes over) one run per order id, waits for all of them and prints one JSON object
{workflow_id: result}. Every step body writes a row to `fault_events` on its own connection
before its checkpoint, so the tests can count how often each body ran.

Environment knobs (seconds unless said otherwise):
  FAULT_LEASE_SECONDS          lease of this process's runs (default 1.0)
  FAULT_RESERVE_SECONDS        time spent in step 1 (reserve)
  FAULT_CHARGE_SECONDS         time spent in step 2 (charge)
  FAULT_JITTER                 each step also sleeps a random 0..JITTER
  FAULT_EMAIL_SECONDS          time spent in the at-most-once send_email step
  FAULT_CRASH_AFTER_SHIP_COMMIT=1   os._exit(9) right after the ship transaction commits
  FAULT_CRASH_BEFORE_SHIP_COMMIT=1  os._exit(9) right before it commits (step fully recorded)
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from typing import Any

import psycopg
from pydantic import BaseModel

import pgdurable

DSN = os.environ["PGDURABLE_DSN"]
app = pgdurable.App(DSN, lease_seconds=float(os.environ.get("FAULT_LEASE_SECONDS", "1.0")))

_events_lock = threading.Lock()
_events_conn: psycopg.Connection[Any] | None = None
_local = threading.local()


def log_event(order_id: str, event: str) -> None:
    """Record a side effect, committed at once (outside any checkpoint)."""
    global _events_conn
    with _events_lock:
        if _events_conn is None:
            _events_conn = psycopg.connect(DSN, autocommit=True)
        _events_conn.execute(
            "insert into fault_events (order_id, event, pid) values (%s, %s, %s)",
            (order_id, event, os.getpid()),
        )


def pause(knob: str) -> None:
    seconds = float(os.environ.get(knob, "0")) + random.uniform(
        0, float(os.environ.get("FAULT_JITTER", "0")))
    if seconds > 0:
        time.sleep(seconds)


_CRASH_AFTER = os.environ.get("FAULT_CRASH_AFTER_SHIP_COMMIT") == "1"
_CRASH_BEFORE = os.environ.get("FAULT_CRASH_BEFORE_SHIP_COMMIT") == "1"
if _CRASH_AFTER or _CRASH_BEFORE:
    # Test-only fault injection around the COMMIT of the ship step's transaction (after its
    # body and its checkpoint ran inside it), before the step returns to the workflow.
    _original_exit = psycopg.Transaction.__exit__

    def _crash_around_commit(
        self: psycopg.Transaction, exc_type: Any, exc: Any, tb: Any
    ) -> bool:
        armed = exc_type is None and getattr(_local, "ship_in_progress", False)
        if armed and _CRASH_BEFORE:
            print("crashing right before the ship commit", flush=True)
            os._exit(9)
        result = _original_exit(self, exc_type, exc, tb)
        if armed and _CRASH_AFTER:
            print("crashing right after the ship commit", flush=True)
            os._exit(9)
        return result

    psycopg.Transaction.__exit__ = _crash_around_commit  # type: ignore[method-assign]


class Receipt(BaseModel):
    order_id: str
    reservation: str
    charge_id: str
    shipment_id: int


@app.step()
def reserve(order_id: str) -> str:
    log_event(order_id, "reserve")
    pause("FAULT_RESERVE_SECONDS")
    return f"res-{order_id}"


@app.step()
def charge(order_id: str, reservation: str) -> str:
    log_event(order_id, "charge:start")
    pause("FAULT_CHARGE_SECONDS")
    log_event(order_id, "charge:done")
    return f"ch-{order_id}"


@app.transaction()
def ship(conn: psycopg.Connection[Any], order_id: str, charge_id: str) -> int:
    log_event(order_id, "ship:body")  # on its own connection: counts body runs
    row = conn.execute(
        "insert into fault_shipments (order_id, charge_id) values (%s, %s) returning id",
        (order_id, charge_id),
    ).fetchone()
    assert row is not None
    _local.ship_in_progress = True  # only the step's own transaction is still open
    return int(row[0])


@app.workflow()
def checkout(order_id: str) -> Receipt:
    reservation = reserve(order_id)
    charge_id = charge(order_id, reservation)
    shipment_id = ship(order_id, charge_id)
    return Receipt(order_id=order_id, reservation=reservation, charge_id=charge_id,
                   shipment_id=shipment_id)


@app.step(at_most_once=True)
def send_email(order_id: str) -> str:
    log_event(order_id, "email:start")
    pause("FAULT_EMAIL_SECONDS")
    log_event(order_id, "email:sent")
    return "sent"


@app.step()
def flag_for_review(order_id: str) -> str:
    log_event(order_id, "flag")
    return "flagged for review"


@app.workflow()
def notify(order_id: str) -> str:
    try:
        return send_email(order_id)
    except pgdurable.StepOutcomeUnknown:
        return flag_for_review(order_id)


def main(argv: list[str]) -> None:
    command, order_ids = argv[0], argv[1:]
    flow: pgdurable.WorkflowFunction[[str], Any] = {"checkout": checkout, "notify": notify}[
        command]
    with app:
        handles = [app.start(flow, oid, workflow_id=f"{command}-{oid}") for oid in order_ids]
        print(f"started {len(handles)}", flush=True)
        results = {}
        for handle in handles:
            value = handle.result(timeout=120)
            results[handle.workflow_id] = (
                value.model_dump(mode="json") if isinstance(value, BaseModel) else value)
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
