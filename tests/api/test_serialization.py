"""JSON serialisation driven by annotations, and structured error records."""

from __future__ import annotations

import dataclasses
import enum
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from pydantic import BaseModel

import pgdurable
from pgdurable import WorkflowFunction
from tests.support.fixtures import AppFactory
from tests.support.runs import Calls, Crash, run_state, wait_lease_expired, workflow_count

Conn = psycopg.Connection[tuple[object, ...]]


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Item(BaseModel):
    sku: str
    price: Decimal
    color: Color = Color.RED


@dataclasses.dataclass
class Address:
    street: str
    zip_code: str


class Order(BaseModel):
    order_id: uuid.UUID
    placed_at: datetime
    items: list[Item]
    address: Address
    note: str | None = None


class Summary(BaseModel):
    order_id: uuid.UUID
    total: Decimal
    items: list[Item]
    due: date
    address: Address
    stamps: dict[str, datetime]


ORDER = Order(
    order_id=uuid.UUID("12345678-1234-5678-1234-567812345678"),
    placed_at=datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=UTC),
    items=[Item(sku="a", price=Decimal("19.99")), Item(sku="b", price=Decimal("0.01"),
                                                       color=Color.BLUE)],
    address=Address("1 Main St", "01234"),
)


def build_typed(
    app: pgdurable.App, calls: Calls, observed: list[tuple[str, type[Any]]],
    crash_at: str | None = None,
) -> WorkflowFunction[[Order, Address, datetime, uuid.UUID, Decimal, list[Item]], Summary]:
    def step_ran(label: str) -> None:
        if calls.hit(label) == 1 and label == crash_at:
            raise Crash()

    @app.step()
    def total(items: list[Item]) -> Decimal:
        step_ran("total")
        return sum((item.price for item in items), Decimal("0.00"))

    @app.step()
    def copy_items(order: Order) -> list[Item]:
        step_ran("copy_items")
        return list(order.items)

    @app.step()
    def due_date(placed: datetime) -> date:
        step_ran("due_date")
        return (placed + timedelta(days=30)).date()

    @app.step()
    def where(address: Address) -> Address:
        step_ran("where")
        return Address(address.street.upper(), address.zip_code)

    @app.step()
    def stamp(when: datetime) -> dict[str, datetime]:
        step_ran("stamp")
        return {"placed": when, "naive": datetime(2024, 1, 1, 12, 0)}

    @app.step()
    def echo_id(value: uuid.UUID) -> uuid.UUID:
        step_ran("echo_id")
        return value

    @app.workflow()
    def summarise(
        order: Order, address: Address, when: datetime, ident: uuid.UUID, extra: Decimal,
        more: list[Item],
    ) -> Summary:
        for name, value in [("order", order), ("address", address), ("when", when),
                            ("ident", ident), ("extra", extra), ("more[0]", more[0])]:
            observed.append((f"input {name}", type(value)))
        amount = total(order.items + more)
        items = copy_items(order)
        due = due_date(when)
        addr = where(address)
        stamps = stamp(when)
        same_id = echo_id(ident)
        for name, value in [("total", amount), ("items[0]", items[0]), ("due", due),
                            ("where", addr), ("stamp", stamps["placed"]), ("id", same_id)]:
            observed.append((f"step {name}", type(value)))
        return Summary(order_id=same_id, total=amount + extra, items=items, due=due,
                       address=addr, stamps=stamps)

    return summarise


EXPECTED_TYPES = [
    ("input order", Order), ("input address", Address), ("input when", datetime),
    ("input ident", uuid.UUID), ("input extra", Decimal), ("input more[0]", Item),
    ("step total", Decimal), ("step items[0]", Item), ("step due", date),
    ("step where", Address), ("step stamp", datetime), ("step id", uuid.UUID),
]
ARGS = (ORDER, Address("2 Side St", "99999"), ORDER.placed_at, ORDER.order_id,
        Decimal("1.50"), [Item(sku="c", price=Decimal("5"))])


def check_summary(summary: Summary) -> None:
    assert isinstance(summary, Summary)
    assert summary.order_id == ORDER.order_id
    assert summary.total == Decimal("26.50") and isinstance(summary.total, Decimal)
    assert summary.items == ORDER.items
    assert summary.items[1].color is Color.BLUE
    assert summary.due == date(2024, 3, 30)
    assert summary.address == Address("2 SIDE ST", "99999")
    assert isinstance(summary.address, Address)
    assert summary.stamps["placed"] == ORDER.placed_at
    assert summary.stamps["placed"].tzinfo is not None
    assert summary.stamps["naive"] == datetime(2024, 1, 1, 12, 0)


def test_typed_values_round_trip_as_inputs_step_outputs_and_results(
    app: pgdurable.App
) -> None:
    observed: list[tuple[str, type[Any]]] = []
    flow = build_typed(app, Calls(), observed)
    summary = app.start(flow, *ARGS, workflow_id="typed").result(timeout=10)
    check_summary(summary)
    assert observed == EXPECTED_TYPES
    # Stored as plain JSON, readable from SQL.
    info = app.get_workflow("typed")
    assert info.inputs["args"][0]["order_id"] == str(ORDER.order_id)
    assert info.output["total"] == "26.50"
    # Retrieved later (another handle), the result is decoded again.
    check_summary(app.retrieve("typed").result(timeout=1))


def test_replayed_step_outputs_are_decoded_to_their_annotated_types(
    make_app: AppFactory, conn: Conn
) -> None:
    calls = Calls()
    app1 = make_app(lease_seconds=0.5, heartbeat_seconds=0.1)
    app1.start(build_typed(app1, calls, [], crash_at="echo_id"), *ARGS, workflow_id="typed2")
    app1.close()
    wait_lease_expired(conn, "typed2")

    observed: list[tuple[str, type[Any]]] = []
    app2 = make_app()
    build_typed(app2, calls, observed)
    check_summary(app2.resume("typed2").result(timeout=10))
    assert observed == EXPECTED_TYPES  # the five replayed outputs come back as their types
    assert calls["total"] == 1 and calls["stamp"] == 1 and calls["echo_id"] == 2


class Opaque:
    """Not describable as JSON."""


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        pytest.param(("not a number",), {}, id="wrong-type"),
        pytest.param((1, 2, 3), {}, id="too-many-args"),
        pytest.param((), {"nope": 1}, id="unknown-kwarg"),
        pytest.param((1,), {"blob": Opaque()}, id="opaque-object-for-Any"),
        pytest.param((1,), {"blob": {"k": [1, Opaque()]}}, id="nested-opaque-in-Any"),
    ],
)
def test_bad_arguments_fail_at_start_and_write_nothing(
    app: pgdurable.App, conn: Conn, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    calls = Calls()

    @app.workflow()
    def flow(n: int, blob: Any = None) -> int:
        calls.hit("flow")
        return n

    with pytest.raises(pgdurable.SerializationError, match="flow"):
        app.start(flow, *args, workflow_id="bad", **kwargs)
    assert workflow_count(conn) == 0
    assert calls.counts == {}


def test_bad_model_argument_fails_at_start(app: pgdurable.App, conn: Conn) -> None:
    @app.workflow()
    def flow(order: Order) -> str:
        return order.note or ""

    with pytest.raises(pgdurable.SerializationError, match="order"):
        app.start(flow, {"order_id": "not-a-uuid"})
    assert workflow_count(conn) == 0


def test_a_non_serialisable_step_output_fails_the_workflow_clearly(
    app: pgdurable.App, conn: Conn
) -> None:
    @app.step()
    def make_handle() -> Any:
        return Opaque()

    @app.step()
    def count() -> int:
        return "many"  # type: ignore[return-value]

    @app.workflow()
    def opaque() -> None:
        make_handle()

    @app.workflow()
    def wrong_type() -> None:
        count()

    for flow, step_name in [(opaque, make_handle.name), (wrong_type, count.name)]:
        with pytest.raises(pgdurable.WorkflowFailed) as failed:
            app.start(flow, workflow_id=flow.name).result(timeout=10)
        assert failed.value.type_name == "pgdurable.errors.SerializationError"
        assert step_name in failed.value.message
        assert "return value" in failed.value.message
        assert app.list_steps(flow.name) == []  # nothing half-recorded


def test_a_non_serialisable_workflow_result_fails_the_run(app: pgdurable.App) -> None:
    @app.workflow()
    def flow() -> Any:
        return Opaque()

    with pytest.raises(pgdurable.WorkflowFailed) as failed:
        app.start(flow, workflow_id="res").result(timeout=10)
    assert failed.value.type_name == "pgdurable.errors.SerializationError"
    assert "return value" in failed.value.message


class InventoryError(Exception):
    """A user-defined error with a plain constructor."""


def raise_inventory_error(sku: str) -> None:
    raise InventoryError(f"out of stock: {sku}")


def test_workflow_errors_reraise_as_workflow_failed_with_type_message_and_traceback(
    app: pgdurable.App
) -> None:
    @app.step()
    def reserve(sku: str) -> None:
        raise_inventory_error(sku)

    @app.workflow()
    def flow(sku: str) -> None:
        reserve(sku)

    with pytest.raises(pgdurable.WorkflowFailed) as failed:
        app.start(flow, "x-1", workflow_id="err").result(timeout=10)
    error = failed.value
    assert error.workflow_id == "err"
    assert error.type_name.endswith("test_serialization.InventoryError")
    assert error.message == "out of stock: x-1"
    assert "raise_inventory_error" in error.traceback
    assert "Traceback (most recent call last)" in error.traceback
    assert "InventoryError: out of stock: x-1" in str(error)
    info = app.get_workflow("err")
    assert info.status == "failed" and info.error is not None
    assert info.error["message"] == "out of stock: x-1"


def test_a_recorded_user_error_replays_as_its_own_type(
    make_app: AppFactory, conn: Conn
) -> None:
    calls = Calls()

    def build(app: pgdurable.App) -> WorkflowFunction[[], str]:
        @app.step()
        def reserve() -> str:
            calls.hit("reserve")
            raise_inventory_error("sku-9")
            return "unreachable"

        @app.step()
        def backorder() -> str:
            if calls.hit("backorder") == 1:
                raise Crash()
            return "backordered"

        @app.workflow()
        def flow() -> str:
            try:
                return reserve()
            except InventoryError:
                return backorder()

        return flow

    app1 = make_app(lease_seconds=0.5, heartbeat_seconds=0.1)
    app1.start(build(app1), workflow_id="replay-err")
    app1.close()
    wait_lease_expired(conn, "replay-err")
    app2 = make_app()
    build(app2)
    assert app2.resume("replay-err").result(timeout=10) == "backordered"
    assert calls.counts == {"reserve": 1, "backorder": 2}


class PaymentDeclined(Exception):
    """The common shape of a domain error: fields, and a formatted message."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code


def test_a_recorded_domain_error_replays_as_its_own_type(
    make_app: AppFactory, conn: Conn
) -> None:
    calls = Calls()

    def build(app: pgdurable.App) -> WorkflowFunction[[], str]:
        @app.step()
        def charge() -> str:
            calls.hit("charge")
            raise PaymentDeclined("E51", "insufficient funds")

        @app.step()
        def notify(text: str) -> str:
            if calls.hit("notify") == 1:
                raise Crash()
            return text

        @app.workflow()
        def flow() -> str:
            try:
                return charge()
            except PaymentDeclined as exc:  # live: caught here
                return notify(f"declined: {exc}")

        return flow

    app1 = make_app(lease_seconds=0.5, heartbeat_seconds=0.1)
    app1.start(build(app1), workflow_id="declined")
    app1.close()
    wait_lease_expired(conn, "declined")
    app2 = make_app()
    build(app2)
    assert app2.resume("declined").result(timeout=10) == "declined: E51: insufficient funds"
    assert calls.counts == {"charge": 1, "notify": 2}


def test_an_error_message_with_a_nul_character_is_recorded(
    app: pgdurable.App, conn: Conn
) -> None:
    @app.workflow()
    def flow(code: int) -> None:
        raw = "a" + chr(code) + "b"  # e.g. bytes read from a file or socket
        raise ValueError(f"cannot parse {raw!r} {raw}")

    with pytest.raises(pgdurable.WorkflowFailed) as failed:
        app.start(flow, 0, workflow_id="nul").result(timeout=3)
    assert failed.value.type_name == "ValueError"
    assert run_state(conn, "nul") == ("failed", 1)


def test_a_nul_character_in_an_argument_is_a_serialisation_error(
    app: pgdurable.App, conn: Conn
) -> None:
    @app.workflow()
    def flow(raw: str) -> str:
        return raw

    with pytest.raises(pgdurable.SerializationError, match="raw"):
        app.start(flow, "a\x00b", workflow_id="nul-arg")
    assert workflow_count(conn) == 0
