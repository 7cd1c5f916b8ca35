"""`pgdurable recover` and `pgdurable worker --recover` as real processes: one sweep with counts,
the long-running daemon (log lines, summary on SIGTERM), the App's schedules, and bad input
(usage errors, unmigrated or unreachable databases: one line, non-zero exit)."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.processes import Proc, cli, leader, one_line_error, processes
from tests.support.sql import claim_one, count, declare, enqueue, scalar, scheduled_ids, workflow
from tests.support.waiting import wait_until

Conn = psycopg.Connection[Any]
COUNT_KEYS = {"requeued", "dead_lettered", "timed_out", "woken_queues", "scheduled",
              "schedule_errors", "purged"}
UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"


def expired_run(conn: Conn, wid: str, queue: str = "default") -> None:
    enqueue(conn, queue, id=wid)
    claim_one(conn, "dead-worker", queue, lease=0.001)
    conn.execute("select pg_sleep(0.01)")


def test_once_json_prints_the_counts(dsn: str, conn: Conn) -> None:
    declare(conn, "fragile", max_recoveries=1)
    expired_run(conn, "back")
    expired_run(conn, "dead", "fragile")
    result = cli(dsn, "recover", "--once", "--json")
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)
    assert set(counts) == COUNT_KEYS
    assert (counts["requeued"], counts["dead_lettered"], counts["purged"]) == (1, 1, 0)
    assert workflow(conn, "back")["status"] == "pending"
    assert workflow(conn, "dead")["status"] == "failed"
    again = json.loads(cli(dsn, "recover", "--once", "--json").stdout)
    assert (again["requeued"], again["dead_lettered"]) == (0, 0)


def test_once_prints_one_line_of_counts(dsn: str, conn: Conn) -> None:
    expired_run(conn, "r")
    result = cli(dsn, "recover", "--once")
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert "\n" not in line
    fields = dict(part.split("=") for part in line.split())
    assert set(fields) == COUNT_KEYS
    assert fields["requeued"] == "1"


def test_once_enforces_retention_and_limit(dsn: str, conn: Conn) -> None:
    for i in range(3):
        enqueue(conn, id=f"old-{i}")
        row = claim_one(conn, "w")
        conn.execute("select pgdurable.finish_workflow(%s, %s, 'succeeded', null, null)",
                     (row["id"], row["epoch"]))
    conn.execute("update pgdurable.workflows set finished_at = finished_at - interval '3 days'")
    kept = json.loads(cli(dsn, "recover", "--once", "--json", "--retention-days", "4").stdout)
    assert kept["purged"] == 0
    first = json.loads(cli(dsn, "recover", "--once", "--json", "--retention-days", "2",
                           "--limit", "2").stdout)
    assert first["purged"] == 2
    assert count(conn, "pgdurable.workflows") == 1


@pytest.mark.parametrize("args", [
    ["--retention-days", "0"], ["--retention-days", "-1"], ["--limit", "0"],
    ["--interval", "0"], ["--retention-days", "soon"],
])
def test_usage_errors(dsn: str, args: list[str]) -> None:
    result = cli(dsn, "recover", "--once", *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert args[0] in result.stderr


@pytest.mark.parametrize("value", ["inf", "nan"])
def test_a_retention_that_is_not_finite_is_refused(dsn: str, conn: Conn, value: str) -> None:
    for args in (["--once"], []):  # the daemon refuses it before starting too
        result = cli(dsn, "recover", *args, "--retention-days", value, timeout=30)
        assert result.returncode != 0, result.stdout
        assert "Traceback" not in result.stderr
        assert "retention" in result.stderr
    assert count(conn, "pgdurable.sweeps") == 0


@pytest.mark.parametrize("args", [["--once"], ["--once", "--json"], []])
def test_an_unmigrated_database_is_one_line_and_exit_1(empty_dsn: str, args: list[str]) -> None:
    line = one_line_error(cli(empty_dsn, "recover", *args, timeout=30))
    assert "no pgdurable schema" in line and "pgdurable migrate" in line


def test_an_unreachable_database_with_once_is_one_line() -> None:
    line = one_line_error(cli(UNREACHABLE, "recover", "--once", timeout=30))
    assert "cannot connect" in line


def test_once_with_app_stores_its_queues_and_schedules(dsn: str, conn: Conn) -> None:
    result = cli(dsn, "recover", "--once", "--json", "--app", "apps.sched_app:app")
    assert result.returncode == 0, result.stderr
    assert set(json.loads(result.stdout)) == COUNT_KEYS
    names = [r[0] for r in conn.execute("select name from pgdurable.schedules order by name")]
    assert names == ["acme-report", "sched.tick"]
    assert scalar(conn, "select count(*) from pgdurable.queues where name = 'reports'") == 1


def test_the_daemon_logs_actions_and_prints_a_summary_on_sigterm(
    dsn: str, conn: Conn, tmp_path: Path
) -> None:
    with processes() as procs:
        daemon = Proc(dsn, tmp_path, "daemon", "recover", "--interval", "0.1", "--json")
        procs.append(daemon)
        wait_until(lambda: leader(conn) == "daemon", timeout=30, what="the daemon to lead")
        expired_run(conn, "orphan")
        wait_until(lambda: "recovery: requeued 1" in daemon.stderr(), timeout=15,
                   what="the requeue to be logged")
        assert workflow(conn, "orphan")["status"] == "pending"
        assert daemon.terminate() == 0
        log = daemon.stderr()
        summary = json.loads(daemon.stdout().strip().splitlines()[-1])
    assert "recovery daemon is now the leader" in log
    assert log.count("recovery: requeued 1") == 1
    assert summary["sweeps"] >= 1 and summary["requeued"] == 1
    assert set(summary) == {"sweeps", *COUNT_KEYS}


def test_worker_with_recover_fires_schedules_and_runs_them(
    dsn: str, conn: Conn, tmp_path: Path
) -> None:
    with processes() as procs:
        worker = Proc(dsn, tmp_path, "worker", "worker", "apps.sched_app:app",
                      "--recover", "--poll-interval", "0.1", "--concurrency", "2")
        procs.append(worker)
        wait_until(lambda: leader(conn) == "worker", timeout=30,
                   what="the worker's embedded daemon to lead")
        conn.execute("update pgdurable.schedules set last_tick = last_tick - interval "
                     "'2 minutes' where name = 'sched.tick'")

        def done() -> list[str]:
            ids = scheduled_ids(conn, "sched.tick")
            states = {workflow(conn, i)["status"] for i in ids}
            return ids if len(ids) >= 2 and states == {"succeeded"} else []

        ids = wait_until(done, timeout=30, what="the caught-up ticks to run")
        outputs = {workflow(conn, i)["output"] for i in ids}
        assert outputs == {f"tick {i}" for i in ids}
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, worker.stderr()
    assert scheduled_ids(conn, "acme-report") == []  # not due


def test_the_daemon_wakes_a_worker_when_a_delayed_run_becomes_due(
    dsn: str, conn: Conn, tmp_path: Path
) -> None:
    """The worker polls only every 30 s; the delayed run starts soon after it is due because
    the daemon's sweep notifies its queue."""
    with processes() as procs:
        worker = Proc(dsn, tmp_path, "sleepy", "worker", "apps.sched_app:app", "--queue",
                      "reports", "--poll-interval", "30")
        procs.append(worker)
        wait_until(lambda: conn.execute(
            "select count(*) from pg_stat_activity where application_name = 'sleepy' "
            "and query = 'listen pgdurable'").fetchone() == (1,), timeout=60,
            what="the worker to listen")
        procs.append(Proc(dsn, tmp_path, "daemon", "recover", "--interval", "0.2"))
        wait_until(lambda: leader(conn) == "daemon", timeout=30, what="the daemon to lead")
        wid = enqueue(conn, "reports", "sched.report", id="later", delay_seconds=1.0,
                      inputs={"args": ["initech"], "kwargs": {}})
        wait_until(lambda: workflow(conn, wid)["status"] == "succeeded", timeout=15,
                   what="the delayed run to be woken and run")
        assert workflow(conn, wid)["output"] == "report for initech"
        assert "recovery: woken queues 1" in procs[1].stderr()


def test_schedules_list_shows_the_stored_schedules_and_their_last_error(
    dsn: str, conn: Conn
) -> None:
    assert cli(dsn, "recover", "--once", "--app", "apps.sched_app:app").returncode == 0
    listed = cli(dsn, "schedules", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert set(rows) == {"sched.tick", "acme-report"}
    assert (rows["acme-report"]["cron"], rows["acme-report"]["queue"],
            rows["acme-report"]["workflow_name"]) == ("0 6 1 * *", "reports", "sched.report")
    assert rows["acme-report"]["last_error"] is None

    # A tick that cannot fire (inputs spoiled behind declare_schedule's back) shows its error.
    conn.execute("update pgdurable.schedules set inputs = '[]', "
                 "last_tick = last_tick - interval '2 minutes' where name = 'sched.tick'")
    counts = json.loads(cli(dsn, "recover", "--once", "--json").stdout)
    assert counts["schedule_errors"] >= 1
    table = cli(dsn, "schedules")
    assert table.returncode == 0, table.stderr
    assert "sched.tick" in table.stdout and "acme-report" in table.stdout
    assert "last error at" in table.stdout and "SQLSTATE PD006" in table.stdout
