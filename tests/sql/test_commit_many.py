"""pgdurable.commit_many (the performance migration): the group commit of step checkpoints and
run endings. Each item behaves as record_step / finish_workflow would, errors stay with their
item, and fencing holds in both orders, as in test_fencing.py."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from psycopg.types.json import Jsonb

from tests.support.interleave import Interleaving
from tests.support.sql import (
    T0,
    Conn,
    acquire,
    call,
    cancel,
    load_steps,
    record,
    set_now,
    start,
    steps,
    workflow,
)

LATER = T0 + timedelta(minutes=1)  # after a 30 s lease
ERROR = {"type": "RuntimeError", "message": "boom", "traceback": ""}


def _j(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value)


def commit_many(conn: Conn, step_items: list[tuple[Any, ...]] = (),  # type: ignore[assignment]
                endings: list[tuple[Any, ...]] = ()) -> list[dict[str, Any]]:  # type: ignore[assignment]
    """step_items: (id, epoch, step_no, name, status, output, error);
    endings: (id, epoch, status, output, error). Returns the exception rows."""
    s = list(zip(*step_items, strict=True)) if step_items else [[]] * 7
    e = list(zip(*endings, strict=True)) if endings else [[]] * 5
    return call(
        conn,
        "select * from pgdurable.commit_many(%s::text[], %s::integer[], %s::integer[], "
        "%s::text[], %s::text[], %s::jsonb[], %s::jsonb[], %s::text[], %s::integer[], "
        "%s::text[], %s::jsonb[], %s::jsonb[])",
        (list(s[0]), list(s[1]), list(s[2]), list(s[3]), list(s[4]),
         [_j(v) for v in s[5]], [_j(v) for v in s[6]],
         list(e[0]), list(e[1]), list(e[2]), [_j(v) for v in e[3]], [_j(v) for v in e[4]]),
    )


def test_a_batch_records_steps_and_finishes_runs(a: Conn) -> None:
    for wid in ("w1", "w2", "w3", "w4"):
        start(a, wid)
    got = commit_many(
        a,
        [("w1", 1, 0, "fetch", "done", {"n": 1}, None),
         ("w2", 1, 0, "fetch", "failed", None, ERROR)],
        [("w3", 1, "succeeded", [3], None), ("w4", 1, "failed", None, ERROR)],
    )
    assert got == []  # no exceptions: everything written as given
    assert [(s["name"], s["status"], s["output"], s["attempt"]) for s in steps(a, "w1")] == [
        ("fetch", "done", {"n": 1}, 1)]
    assert [(s["status"], s["error"]) for s in steps(a, "w2")] == [("failed", ERROR)]
    assert (workflow(a, "w3")["status"], workflow(a, "w3")["output"]) == ("succeeded", [3])
    assert (workflow(a, "w4")["status"], workflow(a, "w4")["error"]) == ("failed", ERROR)
    assert commit_many(a) == []


def test_errors_stay_with_their_item(a: Conn) -> None:
    start(a, "ok")
    start(a, "taken")
    start(a, "clash")
    record(a, "clash", 1, 0, "other")
    set_now(a, LATER)
    acquire(a, "taken", "worker-b")  # epoch 2 now
    set_now(a, T0)
    got = commit_many(
        a,
        [("taken", 1, 0, "s", "done", 1, None), ("ok", 1, 0, "s", "done", 2, None),
         ("clash", 1, 0, "s", "done", 3, None), ("ghost", 1, 0, "s", "done", 4, None),
         ("ok", 1, 1, "s", "bogus", 5, None)],
        [("taken", 1, "succeeded", None, None), ("ok", 1, "succeeded", "fine", None)],
    )
    by = {(r["kind"], r["ord"]): r for r in got}
    assert {k: r["sqlstate"] for k, r in by.items()} == {
        ("step", 1): "PD001", ("step", 3): "PD003", ("step", 4): "PD004", ("step", 5): "PD006",
        ("finish", 1): "PD001"}
    assert [s["output"] for s in steps(a, "ok")] == [2]
    assert workflow(a, "ok")["status"] == "succeeded"
    assert steps(a, "taken") == []


def test_a_position_already_recorded_returns_the_outcome_on_record(a: Conn) -> None:
    start(a, "w1")
    record(a, "w1", 1, 0, "fetch", output="first")
    got = commit_many(a, [("w1", 1, 0, "fetch", "done", "second", None)])
    assert [(r["kind"], r["ord"], r["status"], r["output"], r["inserted"], r["sqlstate"])
            for r in got] == [("step", 1, "done", "first", False, None)]
    # The same outcome again (a retried commit whose first attempt committed): the same row.
    again = commit_many(a, [("w1", 1, 0, "fetch", "done", "first", None)])
    assert [(r["output"], r["inserted"]) for r in again] == [("first", False)]
    assert [s["output"] for s in steps(a, "w1")] == ["first"]


def test_an_at_most_once_intent_is_completed(a: Conn) -> None:
    start(a, "w1")
    call(a, "select * from pgdurable.begin_step('w1', 1, 0, 'send')")
    got = commit_many(a, [("w1", 1, 0, "send", "done", "sent", None)])
    assert [(r["status"], r["output"], r["inserted"]) for r in got] == [("done", "sent", True)]
    assert [(s["status"], s["output"]) for s in steps(a, "w1")] == [("done", "sent")]


def test_a_takeover_waits_for_a_batch_in_flight(
    a: Conn, observer: Conn, interleave: Interleaving
) -> None:
    start(a, "w1")
    start(a, "w2")
    with a.transaction():
        assert commit_many(a, [("w2", 1, 0, "s", "done", 0, None),
                               ("w1", 1, 0, "s", "done", "from-a", None)]) == []
        b = interleave.waits(lambda c: acquire(c, "w1", "worker-b"), now=LATER)
        assert workflow(a, "w1")["attempt"] == 1
    assert [r["epoch"] for r in b.join()] == [2]
    # The committed checkpoint is the new owner's; the stale owner is refused from now on.
    assert [s["output"] for s in load_steps(observer, "w1", 2)] == ["from-a"]
    got = commit_many(a, [("w1", 1, 1, "s", "done", "zombie", None)],
                      [("w1", 1, "succeeded", "zombie", None)])
    assert {(r["kind"], r["sqlstate"]) for r in got} == {("step", "PD001"), ("finish", "PD001")}


def test_a_stale_batch_waits_for_an_uncommitted_takeover_then_is_refused(
    a: Conn, observer: Conn, interleave: Interleaving
) -> None:
    start(a, "w1")
    b = interleave.session(LATER)
    with b.transaction():
        assert acquire(b, "w1", "worker-b")[0]["epoch"] == 2
        zombie = interleave.waits(lambda c: commit_many(
            c, [("w1", 1, 0, "s", "done", "zombie", None)]))
    [row] = zombie.join()
    assert (row["kind"], row["sqlstate"]) == ("step", "PD001")
    assert steps(observer, "w1") == []


def test_cancel_waits_for_a_batch_in_flight_then_fences(
    a: Conn, observer: Conn, interleave: Interleaving
) -> None:
    start(a, "w1")
    with a.transaction():
        commit_many(a, [("w1", 1, 0, "s", "done", 1, None)])
        canceller = interleave.waits(lambda c: cancel(c, "w1"))
    assert canceller.join() == "cancelled"
    [row] = commit_many(a, [], [("w1", 1, "succeeded", "late", None)])
    assert row["sqlstate"] == "PD001"
    assert (workflow(observer, "w1")["status"], len(steps(observer, "w1"))) == ("cancelled", 1)
