"""An App with a queue and cron schedules, for the `pgdurable recover --app` and
`pgdurable worker --recover` tests (cwd tests/support, PGDURABLE_DSN set)."""

from __future__ import annotations

import os

import pgdurable

app = pgdurable.App(os.environ.get("PGDURABLE_DSN"), lease_seconds=3)
reports = app.queue("reports")


@app.scheduled("* * * * *", catch_up=True)
@app.workflow(name="sched.tick")
def tick() -> str:
    return f"tick {pgdurable.workflow_id()}"


@app.workflow(name="sched.report")
def report(customer: str) -> str:
    return f"report for {customer}"


app.schedule("acme-report", "0 6 1 * *", report, "acme", queue="reports",
             timezone="Europe/Paris")
