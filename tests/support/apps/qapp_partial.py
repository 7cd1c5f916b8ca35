"""An App that registers only `qapp.interval` (not `qapp.only_full`), to show that a worker
never claims runs of workflows it does not register."""

from __future__ import annotations

import os

import pgdurable

app = pgdurable.App(os.environ["PGDURABLE_DSN"])
work = app.queue("work")


@app.workflow(name="qapp.interval")
def interval(seconds: float) -> int:
    return os.getpid()
