"""Started several times at once by test_idempotency: every process starts the same workflow id.

Usage: python -m apps.race_start WORKFLOW_ID GO_FILE (PGDURABLE_DSN set). Prints "ready" once
imported and connected, waits for GO_FILE to exist, starts the run, prints the result as JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import psycopg

import pgdurable

DSN = os.environ["PGDURABLE_DSN"]
app = pgdurable.App(DSN, lease_seconds=5.0)


@app.step()
def side_effect(key: str) -> int:
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute("insert into race_effects (key, pid) values (%s, %s)", (key, os.getpid()))
    time.sleep(0.2)  # a second execution, if any, would overlap this one
    return os.getpid()


@app.workflow()
def once(key: str) -> int:
    return side_effect(key)


def main(workflow_id: str, go_file: Path) -> None:
    with app:
        app.list_workflows(limit=1)  # open the pool before the race
        print("ready", flush=True)
        deadline = time.monotonic() + 30
        while not go_file.exists():
            if time.monotonic() > deadline:
                raise SystemExit("never told to go")
            time.sleep(0.001)
        handle = app.start(once, workflow_id, workflow_id=workflow_id)
        print(json.dumps({"pid": os.getpid(), "result": handle.result(timeout=30)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
