"""completions.Completions, the group commit, against a fake database: who writes what, in how
many calls, and which item gets which error."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from pgdurable import errors
from pgdurable.store.completions import Completions, StepRecord


class FakeDb:
    """Records every call; the first call can be held until `release`."""

    def __init__(self, hold_first: bool = False) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.rows: list[dict[str, Any]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        if not hold_first:
            self.release.set()
        self.fail: BaseException | None = None
        self.threads: set[str] = set()

    def pinned(self) -> FakeDb:
        return self

    def close(self) -> None:
        pass

    def fetch_all(self, name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        self.calls.append((name, params))
        self.threads.add(threading.current_thread().name)
        self.entered.set()
        self.release.wait(10)
        if self.fail is not None:
            raise self.fail
        if name == "record_step":
            return [(params["status"], None, None, True)]
        rows, self.rows = self.rows, []
        return [(r["kind"], r["ord"], r["status"], r["output"], r["error"], r["inserted"],
                 r["sqlstate"], r["message"]) for r in rows]


def step(wid: str, step_no: int = 0) -> StepRecord:
    return StepRecord(wid, 1, step_no, "s", "done", None, None)


def record_into(done: Completions, results: dict[str, Any], wid: str) -> None:
    """Checkpoint step 0 of `wid`; its outcome, or the exception, goes to results[wid]."""
    try:
        results[wid] = done.record(step(wid))
    except Exception as exc:
        results[wid] = exc


def test_a_lone_item_is_written_on_the_callers_thread() -> None:
    db = FakeDb()
    done = Completions(db)  # type: ignore[arg-type]
    done.record(step("w1"))
    done.finish("w1", 1, "succeeded", "out", None)
    # A lone step with the plain function; endings always with commit_many (which also wakes
    # the workers of a concurrency-limited queue).
    assert [name for name, _ in db.calls] == ["record_step", "commit_many"]
    assert db.threads == {threading.current_thread().name}


def test_items_queued_during_a_commit_share_the_next_one() -> None:
    db = FakeDb(hold_first=True)
    done = Completions(db)  # type: ignore[arg-type]
    first = threading.Thread(target=done.record, args=(step("lead"),))
    first.start()
    assert db.entered.wait(5)  # the leader's commit is in flight
    others = [threading.Thread(target=done.record, args=(step(f"w{i}"),)) for i in range(6)]
    others.append(threading.Thread(target=done.finish, args=("f1", 1, "succeeded", 1, None)))
    for t in others:
        t.start()
    deadline = time.monotonic() + 5
    while len(done._queued) < 7 and time.monotonic() < deadline:
        time.sleep(0.001)
    db.release.set()
    for t in [first, *others]:
        t.join(5)
        assert not t.is_alive()
    assert [name for name, _ in db.calls] == ["record_step", "commit_many"]
    batch = db.calls[1][1]
    assert sorted(batch["step_ids"]) == [f"w{i}" for i in range(6)]
    assert batch["ids"] == ["f1"]


def test_rows_returned_for_a_batch_reach_their_items() -> None:
    db = FakeDb(hold_first=True)
    done = Completions(db)  # type: ignore[arg-type]
    results: dict[str, Any] = {}

    def fin(wid: str) -> None:
        try:
            done.finish(wid, 1, "succeeded", None, None)
            results[wid] = "finished"
        except Exception as exc:
            results[wid] = exc

    lead = threading.Thread(target=record_into, args=(done, results, "lead"))
    lead.start()
    assert db.entered.wait(5)
    threads = [threading.Thread(target=record_into, args=(done, results, "a"))]
    threads[0].start()
    while len(done._queued) < 1:
        time.sleep(0.001)
    threads.append(threading.Thread(target=record_into, args=(done, results, "b")))
    threads[1].start()
    while len(done._queued) < 2:
        time.sleep(0.001)
    threads.append(threading.Thread(target=fin, args=("c",)))
    threads[2].start()
    while len(done._queued) < 3:
        time.sleep(0.001)
    db.rows = [
        {"kind": "step", "ord": 1, "status": None, "output": None, "error": None,
         "inserted": False, "sqlstate": "PD001", "message": "stale"},
        {"kind": "step", "ord": 2, "status": "done", "output": "theirs", "error": None,
         "inserted": False, "sqlstate": None, "message": None},
        {"kind": "finish", "ord": 1, "status": None, "output": None, "error": None,
         "inserted": None, "sqlstate": "PD001", "message": "stale"},
    ]
    db.release.set()
    for t in [lead, *threads]:
        t.join(5)
    assert isinstance(results["a"], errors.FencedError)
    assert (results["b"].output, results["b"].inserted) == ("theirs", False)
    assert isinstance(results["c"], errors.FencedError)


def test_a_failed_commit_fails_every_item_of_its_batch_only() -> None:
    db = FakeDb()
    done = Completions(db)  # type: ignore[arg-type]
    db.fail = errors.ConfigurationError("database unavailable")
    with pytest.raises(errors.ConfigurationError):
        done.record(step("w1"))
    db.fail = None
    done.record(step("w2"))  # the next commit is not affected
    done.close()
    with pytest.raises(errors.PgDurableError, match="closed"):
        done.record(step("w3"))


def test_an_item_the_server_refuses_does_not_fail_the_others_of_its_batch() -> None:
    class Refusing(FakeDb):
        def fetch_all(self, name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
            bad = "bad" in params.get("step_ids", []) or params.get("id") == "bad"
            rows = super().fetch_all(name, params)
            if bad:
                raise ValueError("invalid input syntax for type json")
            return rows

    db = Refusing(hold_first=True)
    done = Completions(db)  # type: ignore[arg-type]
    results: dict[str, Any] = {}

    threads = [threading.Thread(target=record_into, args=(done, results, wid))
               for wid in ("lead", "bad", "good")]
    threads[0].start()
    assert db.entered.wait(5)
    for t in threads[1:]:
        t.start()
    while len(done._queued) < 2:
        time.sleep(0.001)
    db.release.set()
    for t in threads:
        t.join(5)
    assert isinstance(results["bad"], ValueError)
    assert isinstance(results["good"], StepRecord)
    assert [name for name, _ in db.calls] == ["record_step", "commit_many", "record_step",
                                              "record_step"]
