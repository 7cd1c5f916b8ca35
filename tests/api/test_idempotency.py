"""Caller-chosen workflow ids are idempotency keys."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import psycopg
import pytest

import pgdurable
from tests.support.processes import Piped, processes
from tests.support.runs import Calls, run_state, workflow_count
from tests.support.sql import scalar

Conn = psycopg.Connection[tuple[object, ...]]


def test_second_start_returns_the_same_run_without_running_again(
    app: pgdurable.App, conn: Conn
) -> None:
    calls = Calls()

    @app.step()
    def greet(name: str) -> str:
        calls.hit(name)
        return f"hello {name}"

    @app.workflow()
    def hello(name: str) -> str:
        return greet(name)

    first = app.start(hello, "ada", workflow_id="same")
    assert first.result(timeout=10) == "hello ada"
    # Documented: an existing id returns the existing run, even with other arguments.
    second = app.start(hello, "bob", workflow_id="same")
    assert second.workflow_id == first.workflow_id == "same"
    assert second.result(timeout=10) == "hello ada"
    by_name = app.start(hello.name, "eve", workflow_id="same")
    assert by_name.result(timeout=10) == "hello ada"
    assert calls.counts == {"ada": 1}
    assert workflow_count(conn) == 1
    assert run_state(conn, "same") == ("succeeded", 1)
    assert app.get_workflow("same").inputs == {"args": ["ada"], "kwargs": {}}


def test_generated_ids_are_distinct_runs(app: pgdurable.App, conn: Conn) -> None:
    @app.workflow()
    def echo(x: int) -> int:
        return x

    handles = [app.start(echo, i) for i in range(3)]
    assert [h.result(timeout=10) for h in handles] == [0, 1, 2]
    assert len({h.workflow_id for h in handles}) == 3
    assert workflow_count(conn) == 3


def test_same_id_for_another_workflow_is_a_conflict(app: pgdurable.App, conn: Conn) -> None:
    calls = Calls()

    @app.workflow()
    def first() -> str:
        calls.hit("first")
        return "first"

    @app.workflow()
    def second() -> str:
        calls.hit("second")
        return "second"

    assert app.start(first, workflow_id="shared").result(timeout=10) == "first"
    with pytest.raises(pgdurable.WorkflowConflict, match="shared"):
        app.start(second, workflow_id="shared")
    assert calls.counts == {"first": 1}
    assert app.get_workflow("shared").name == first.name
    assert workflow_count(conn) == 1


def test_threads_racing_to_start_one_id_run_it_once(app: pgdurable.App, conn: Conn) -> None:
    calls = Calls()

    @app.step()
    def effect() -> str:
        calls.hit("effect")
        return threading.current_thread().name

    @app.workflow()
    def once() -> str:
        return effect()

    barrier = threading.Barrier(8)
    results: list[str] = []

    def racer() -> None:
        barrier.wait()
        results.append(app.start(once, workflow_id="raced").result(timeout=10))

    threads = [threading.Thread(target=racer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == 8 and len(set(results)) == 1
    assert calls["effect"] == 1
    assert run_state(conn, "raced") == ("succeeded", 1)


def test_processes_racing_to_start_one_id_run_it_once(
    dsn: str, conn: Conn, tmp_path: Path
) -> None:
    conn.execute("create table race_effects (key text not null, pid integer not null)")
    go = tmp_path / "go"
    with processes() as procs:
        procs += [Piped(dsn, "-m", "apps.race_start", "race-1", str(go)) for _ in range(4)]
        for proc in procs:
            assert proc.proc.stdout is not None
            assert proc.proc.stdout.readline().strip() == "ready"
        go.touch()  # all four are connected and polling: they start within a millisecond
        outputs = [proc.wait(timeout=60) for proc in procs]
    for code, _, err in outputs:
        assert code == 0, err
    results = [json.loads(out)["result"] for _, out, _ in outputs]
    effects = conn.execute("select pid from race_effects").fetchall()
    assert len(effects) == 1, effects
    assert results == [effects[0][0]] * 4  # everyone sees the one execution's result
    assert run_state(conn, "race-1") == ("succeeded", 1)
    assert scalar(conn, "select count(*) from pgdurable.steps") == 1
