"""The examples are runnable code: run them against the test database."""

from __future__ import annotations

import importlib
import sys
import threading
from pathlib import Path

import pgdurable

ROOT_DIR = Path(__file__).resolve().parents[2]


def test_agent_fanout_example_gathers_every_tool_call(dsn: str) -> None:
    sys.path.insert(0, str(ROOT_DIR))
    try:
        example = importlib.import_module("examples.agent_fanout")
    finally:
        sys.path.remove(str(ROOT_DIR))
    app: pgdurable.App = example.app
    app.use_dsn(dsn)
    try:
        worker = pgdurable.Worker(app, concurrency=8, poll_interval=0.05)
        thread = threading.Thread(target=worker.run)
        thread.start()
        try:
            handle = example.agents.enqueue(example.agent, "pick a queue", workflow_id="a1")
            summary = handle.result(timeout=60)
        finally:
            worker.stop()
            thread.join(timeout=30)
        assert summary.count("findings for") == 5
        children = [w for w in app.list_workflows(limit=50) if w.id.startswith("a1:")]
        assert sorted(w.id for w in children) == [f"a1:1:{n}" for n in range(5)]
        assert {w.status for w in children} == {"succeeded"}
        assert [s.name.rsplit(".", 1)[-1] for s in app.list_steps("a1")] == [
            "plan", "children", "gather", "summarise"]
    finally:
        app.close()
