"""A small order pipeline: reserve stock, charge the card, record the shipment.

Used by demo.py; run it yourself with `python examples/orders.py` after `pgdurable migrate`.
"""

from __future__ import annotations

import os
import time
from decimal import Decimal

import psycopg
from pydantic import BaseModel

import pgdurable

# A short lease so the demo's crash recovery takes seconds; production default is 30 s.
app = pgdurable.App(lease_seconds=3.0)


class Order(BaseModel):
    order_id: str
    item: str
    quantity: int
    amount: Decimal


class Receipt(BaseModel):
    order_id: str
    charge_id: str
    shipment_id: int


def say(message: str) -> None:
    print(f"  [pid {os.getpid()}] {message}", flush=True)


@app.step()
def reserve_inventory(order: Order) -> str:
    say(f"step 1 reserve_inventory: reserving {order.quantity} x {order.item}")
    return f"res-{order.order_id}"


@app.step(retries=3, interval=0.2)
def charge_card(order: Order, reservation: str) -> str:
    say(f"step 2 charge_card: charging {order.amount} EUR for {reservation} ...")
    time.sleep(float(os.environ.get("DEMO_CHARGE_SECONDS", "0.5")))  # a slow payment API
    say("step 2 charge_card: charged")
    return f"ch-{order.order_id}"


@app.transaction()
def record_shipment(conn: psycopg.Connection[tuple[int]], order: Order, charge_id: str) -> int:
    # The business row and the step's checkpoint commit in one transaction: exactly once.
    conn.execute(
        "create table if not exists demo_shipments "
        "(id serial primary key, order_id text unique, charge_id text)"
    )
    row = conn.execute(
        "insert into demo_shipments (order_id, charge_id) values (%s, %s) returning id",
        (order.order_id, charge_id),
    ).fetchone()
    assert row is not None
    say(f"step 3 record_shipment: shipment {row[0]} written")
    return row[0]


@app.workflow()
def checkout(order: Order) -> Receipt:
    reservation = reserve_inventory(order)
    charge_id = charge_card(order, reservation)
    shipment_id = record_shipment(order, charge_id)
    return Receipt(order_id=order.order_id, charge_id=charge_id, shipment_id=shipment_id)


if __name__ == "__main__":
    order = Order(order_id=f"o{int(time.time())}", item="widget", quantity=2, amount=Decimal("42"))
    with app:
        print(app.start(checkout, order, workflow_id=f"order-{order.order_id}").result(timeout=60))
