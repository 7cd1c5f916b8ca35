"""pgdurable.fork: a new queued run with the original's inputs and its steps 0..n-1, the
original untouched; bad input raises and writes nothing."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.sql import (
    T0,
    Conn,
    begin,
    call,
    claim_one,
    count,
    declare,
    enqueue,
    finish,
    fork,
    load_steps,
    notifications,
    ready_ids,
    record,
    sqlstate,
    start,
    steps,
    workflow,
)

INPUTS = {"args": ["ada"], "kwargs": {"n": 3}}
STEP_COLUMNS = ("step_no", "name", "status", "output", "error", "started_at", "finished_at")


def _original(db: Conn) -> None:
    """Run `o`: steps 0-2 done, step 3 failed (caught), step 4 an at-most-once intent; then
    it succeeds."""
    start(db, "o", inputs=INPUTS)
    for n in range(3):
        record(db, "o", 1, n, f"s{n}", output={"n": n})
    record(db, "o", 1, 3, "s3", status="failed", error={"type": "ValueError", "message": "x"})
    begin(db, "o", 1, 4, "s4")
    finish(db, "o", 1, output="done")


def _snapshot(db: Conn) -> tuple[list[dict[str, Any]], dict[str, Any], int, int, set[str]]:
    return (steps(db, "o"), workflow(db, "o"), count(db, "pgdurable.workflows"),
            count(db, "pgdurable.steps"), ready_ids(db))


@pytest.mark.parametrize("from_step", [0, 1, 3, 4, 5])
def test_fork_copies_steps_before_from_step_exactly(db: Conn, from_step: int) -> None:
    _original(db)
    before = _snapshot(db)
    assert fork(db, "o", from_step, "f") == "f"

    copied = steps(db, "f")
    original = steps(db, "o")
    assert [tuple(s[c] for c in STEP_COLUMNS) for s in copied] == [
        tuple(s[c] for c in STEP_COLUMNS) for s in original[:from_step]]
    assert all(s["attempt"] == 1 for s in copied)  # the copying is the fork's epoch 1
    run = workflow(db, "f")
    assert (run["name"], run["status"], run["inputs"], run["queue"], run["forked_from"],
            run["parent_id"], run["attempt"]) == ("flow", "pending", INPUTS, "default", "o",
                                                   None, 1)
    assert ready_ids(db) == {"f"}
    # The original is untouched.
    assert steps(db, "o") == before[0] and workflow(db, "o") == before[1]


def test_fork_is_claimed_and_replays_the_copies(db: Conn) -> None:
    _original(db)
    fork(db, "o", 2, "f")
    run = claim_one(db, "worker-b")
    assert (run["id"], run["epoch"], run["has_steps"]) == ("f", 2, True)
    assert [(s["step_no"], s["output"]) for s in load_steps(db, "f", 2)] == [
        (0, {"n": 0}), (1, {"n": 1})]
    # The fork runs step 2 again; the copies are replayed, never overwritten.
    assert record(db, "f", 2, 2, "s2", output="new")["inserted"] is True
    assert record(db, "f", 2, 0, "s0", output="other") == {
        "status": "done", "output": {"n": 0}, "error": None, "inserted": False}
    assert [s["output"] for s in steps(db, "o")][:3] == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_a_copied_at_most_once_intent_stays_unknown(db: Conn) -> None:
    _original(db)
    fork(db, "o", 5, "f")
    claim_one(db, "worker-b")
    # The fork's own epoch does not complete the copied intent: its outcome is unknown.
    assert begin(db, "f", 2, 4, "s4")["status"] == "started"
    assert record(db, "f", 2, 4, "s4", output=1)["inserted"] is False


def test_fork_of_a_run_without_steps_and_on_another_queue(db: Conn) -> None:
    declare(db, "other")
    enqueue(db, "default", id="q", inputs=INPUTS, priority=3)
    assert fork(db, "q", 0, "f", "other") == "f"
    run = workflow(db, "f")
    assert (run["queue"], run["priority"], run["inputs"]) == ("other", 3, INPUTS)
    assert ready_ids(db, "other") == {"f"}
    assert workflow(db, "q")["status"] == "pending"


def test_fork_without_an_id_makes_a_uuid_and_notifies(db: Conn, dsn: str) -> None:
    import psycopg

    _original(db)
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("listen pgdurable")
        new_id = fork(db, "o", 1)
        assert notifications(listener, expect=1) == ["default"]
    assert len(new_id) == 36 and workflow(db, new_id)["forked_from"] == "o"


def test_a_retried_fork_returns_the_same_run(db: Conn) -> None:
    _original(db)
    fork(db, "o", 2, "f")
    claim_one(db, "worker-b")
    record(db, "f", 2, 2, "s2", output="fork's own")  # the fork ran on meanwhile
    before = (steps(db, "f"), workflow(db, "f"))
    assert fork(db, "o", 2, "f") == "f"
    assert (steps(db, "f"), workflow(db, "f")) == before


@pytest.mark.parametrize(
    ("case", "code"),
    [
        (("missing", 0, None, None), "PD004"),
        (("o", -1, None, None), "PD006"),
        (("o", None, None, None), "PD006"),
        (("o", 6, None, None), "PD006"),  # 5 recorded positions: 0..5 allowed
        (("o", 100, None, None), "PD006"),
        (("o", 0, "", None), "PD006"),
        (("o", 0, None, "nowhere"), "PD007"),
        (("o", 1, "o", None), "PD002"),  # the original's own id
        (("o", 1, "f", None), "PD002"),  # a fork of o, but from step 2
        (("o", 2, "other", None), "PD002"),  # another run
    ],
)
def test_bad_input_raises_and_writes_nothing(
    db: Conn, case: tuple[str, int | None, str | None, str | None], code: str
) -> None:
    _original(db)
    fork(db, "o", 2, "f")
    start(db, "other")
    before = _snapshot(db)
    fork_before = (steps(db, "f"), workflow(db, "f"))
    with sqlstate(code):
        fork(db, *case)
    assert _snapshot(db) == before
    assert (steps(db, "f"), workflow(db, "f")) == fork_before


def test_fork_beyond_the_last_step_names_the_range(db: Conn) -> None:
    _original(db)
    with pytest.raises(Exception, match=r"has 5 recorded steps: fork from a step in 0\.\.5"):
        fork(db, "o", 6)


def test_fork_copies_a_running_original_as_it_is(db: Conn) -> None:
    start(db, "o", inputs=INPUTS)
    record(db, "o", 1, 0, "s0", output=0)
    assert fork(db, "o", 1, "f") == "f"
    # The original goes on as if nothing happened.
    assert record(db, "o", 1, 1, "s1", output=1)["inserted"] is True
    finish(db, "o", 1, output="ok")
    assert workflow(db, "o")["status"] == "succeeded"
    assert [s["step_no"] for s in steps(db, "f")] == [0]
    assert call(db, "select created_at from pgdurable.workflows where id = 'f'")[0][
        "created_at"] == T0
