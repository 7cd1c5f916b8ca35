"""`pgdurable bench` end to end with a tiny N: every scenario runs, the JSON report has the
documented shape, the bench database is gone afterwards, and bad input is one `Error:` line.
Numbers are never asserted: they depend on the machine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from pgdurable_bench import bench_command

UNREACHABLE = "postgresql://x@127.0.0.1:1/x"

EXPECTED_LINES = [
    "baseline-sql",
    "raw insert single", "enqueue single", "raw insert x20", "enqueue_many x20",
    "queue 0-step", "queue 1-step", "queue 3-step",
    "raw commit per step", "direct 10-step",
    "transaction 1-step",
    "raw listen loop", "idle worker",
]


def _env() -> dict[str, str]:
    # No PGDURABLE_* setting of the developer's may change what the bench does.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGDURABLE_")}
    env["NO_COLOR"] = "1"
    return env


def _bench(*args: str) -> list[str]:
    return [sys.executable, "-m", "pgdurable.cli", "bench", *args]


def _bench_databases(server_dsn: str) -> set[str]:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "select datname from pg_database where datname like 'pgdurable_bench_%'"
        ).fetchall()
    return {str(r[0]) for r in rows}


def _check_entry(entry: dict[str, Any]) -> None:
    assert set(entry) >= {"scenario", "name", "unit", "count", "runs", "is_reference",
                          "throughput", "ratio", "latency_ms", "seconds", "cpu_s",
                          "wal_bytes_per_job", "server_cpu_s"}
    assert set(entry) >= {"detail"}
    assert entry["runs"] == 1 and entry["count"] > 0
    assert entry["cpu_s"] >= 0 and entry["seconds"] > 0
    assert isinstance(entry["wal_bytes_per_job"], int | float)
    if entry["throughput"] is not None:
        assert set(entry["throughput"]) == {"median", "min", "max"}
    if entry["is_reference"]:
        assert entry["ratio"] is None
    else:
        assert set(entry["ratio"]) == {"reference", "metric", "median", "min", "max"}
    for values in entry["latency_ms"].values():
        assert set(values) == {"p50", "p95", "p99"}


def test_every_scenario_reports_json_and_drops_its_database(server_dsn: str,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        _bench("--dsn", server_dsn, "--n", "20", "--repeat", "1", "--json", "--out", str(out)),
        env=_env(), capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert json.loads(out.read_text()) == report
    assert set(report) == {"command", "settings", "server", "machine", "results"}
    assert report["settings"]["n"] == 20
    assert report["settings"]["scenarios"] == ["baseline-sql", "enqueue", "queue", "direct",
                                               "transaction", "latency"]
    assert [e["name"] for e in report["results"]] == EXPECTED_LINES
    for entry in report["results"]:
        _check_entry(entry)
    latency = {e["name"]: e for e in report["results"]}["idle worker"]
    assert latency["ratio"]["metric"] == "enqueue_to_start p50"
    assert "enqueue_to_start" in latency["latency_ms"]
    assert report["server"]["database"].startswith("pgdurable_bench_")
    assert report["server"]["database"] not in _bench_databases(server_dsn)


def test_table_output_and_the_baseline_joining_in(server_dsn: str) -> None:
    result = subprocess.run(
        _bench("queue", "--dsn", server_dsn, "--n", "20", "--steps", "2", "--workers", "2"),
        env=_env(), capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("pgdurable bench: n=20 workers=2")
    assert any(line.startswith("baseline-sql") and "reference" in line for line in lines)
    assert any(line.startswith("queue 2-step") and "of baseline-sql" in line for line in lines)


def test_ctrl_c_drops_the_database(server_dsn: str) -> None:
    before = _bench_databases(server_dsn)
    proc = subprocess.Popen(_bench("baseline-sql", "--dsn", server_dsn, "--n", "200000"),
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 30
    while not (ours := _bench_databases(server_dsn) - before):  # other runs may share the server
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(0.5)  # into the scenario
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "Traceback" not in err
    assert not ours & _bench_databases(server_dsn)


def _check_change(change: dict[str, Any], fields: set[str]) -> None:
    assert set(change) >= {"before", "after"}
    for side in ("before", "after"):
        assert set(change[side]) >= fields, change


def test_backlog_reports_its_three_lines_with_a_real_backlog_and_held_xmin(
        server_dsn: str, tmp_path: Path) -> None:
    out = tmp_path / "backlog.json"
    n, rows = 40, 2000
    result = subprocess.run(
        _bench("backlog", "--dsn", server_dsn, "--n", str(n), "--backlog-rows", str(rows),
               "--xmin-seconds", "1", "--out", str(out)),
        env=_env(), capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    # The table, with the before/after section.
    assert "backlog-rows=2000 xmin-seconds=1" in result.stdout.splitlines()[0]
    assert any(line.startswith("backlog 2k queued") and "of backlog fresh" in line
               for line in result.stdout.splitlines())
    assert "backlog, before -> after the measured churn" in result.stdout
    assert "dead tuples a VACUUM under the hold left" in result.stdout

    report = json.loads(out.read_text())
    assert report["settings"]["scenarios"] == ["backlog"]  # the baseline does not join in
    assert report["settings"]["backlog_rows"] == rows
    assert report["settings"]["xmin_seconds"] == 1
    entries = {e["name"]: e for e in report["results"]}
    assert list(entries) == ["backlog fresh", "backlog 2k queued", "backlog xmin held"]
    for entry in entries.values():
        _check_entry(entry)
        assert entry["scenario"] == "backlog" and entry["throughput"] is not None
        detail = entry["detail"]
        assert set(detail["tables"]) == {"ready", "workflows"}
        for change in detail["tables"].values():
            _check_change(change, {"n_live_tup", "n_dead_tup", "table_bytes", "index_bytes",
                                   "indexes"})
            assert set(change["during"]) == {"updates", "hot_updates", "deletes",
                                             "autovacuums", "autoanalyzes"}
        assert detail["tables"]["ready"]["during"]["deletes"] >= entry["count"]  # the claims
        _check_change(detail["claim_probe"], {"ms", "buffers", "rows"})
        assert "latency_ms" in entry and entry["latency_ms"]["start_to_finish"]
    fresh = entries["backlog fresh"]
    assert fresh["is_reference"] and fresh["count"] == n
    for name in ("backlog 2k queued", "backlog xmin held"):
        assert entries[name]["ratio"]["reference"] == "backlog fresh"

    # The backlog was really there, behind the measured runs, and mostly still is.
    queued = entries["backlog 2k queued"]
    assert queued["count"] == n
    backlog = queued["detail"]["backlog_rows"]
    assert backlog["before"] == rows and 0 <= backlog["after"] <= rows
    assert queued["detail"]["fill_seconds"] > 0
    ready = queued["detail"]["tables"]["ready"]
    assert ready["before"]["n_live_tup"] == rows + n
    assert ready["after"]["n_live_tup"] == backlog["after"]
    assert ready["before"]["table_bytes"] > fresh["detail"]["tables"]["ready"]["before"][
        "table_bytes"]

    # xmin was held while the workload churned: every claimed ready row and every superseded
    # workflow version is still there as a dead tuple, even after a VACUUM.
    held = entries["backlog xmin held"]["detail"]
    runs = held["runs"]
    assert held["rounds"] >= 1 and runs == n * held["rounds"]
    assert entries["backlog xmin held"]["count"] == runs
    assert held["xmin_held_seconds"] >= 1 and held["xmin_age"] > 0
    assert held["tables"]["ready"]["before"]["n_dead_tup"] == 0
    assert held["tables"]["ready"]["after"]["n_dead_tup"] >= runs
    assert held["tables"]["workflows"]["after"]["n_dead_tup"] >= 2 * runs  # claim + finish
    assert held["dead_after_vacuum_while_held"]["ready"] >= runs
    assert held["dead_after_vacuum_while_held"]["workflows"] >= 2 * runs
    assert report["server"]["database"] not in _bench_databases(server_dsn)


@pytest.mark.parametrize("args", [
    ["--n", "0"],
    ["--n", "-5"],
    ["--workers", "0"],
    ["--concurrency", "-1"],
    ["--steps", "-1"],
    ["--payload-bytes", "-1"],
    ["--repeat", "0"],
    ["--backlog-rows", "0"],
    ["--backlog-rows", "-1000"],
    ["--xmin-seconds", "0"],
    ["--xmin-seconds", "-60"],
    ["--n", "many"],
    ["no-such-scenario"],
    ["--dsn", UNREACHABLE],
    ["--out", "/no-such-directory/bench.json"],
])
def test_bad_input_is_one_error_line(args: list[str]) -> None:
    result = CliRunner().invoke(bench_command, args, env={"PGDURABLE_DSN": None})
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error:"), lines[0]


def test_fanout_joins_its_children_and_compares_with_a_drain(server_dsn: str,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "fanout.json"
    result = subprocess.run(
        _bench("fanout", "--dsn", server_dsn, "--children", "30", "--out", str(out)),
        env=_env(), capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["settings"]["scenarios"] == ["fanout"]
    entries = {e["name"]: e for e in report["results"]}
    assert list(entries) == ["drain 30", "fanout 30"]
    for entry in entries.values():
        _check_entry(entry)
    fan = entries["fanout 30"]
    assert fan["count"] == 30 and fan["throughput"]["median"] > 0
    assert fan["ratio"]["reference"] == "drain 30"
    assert fan["latency_ms"]["wake"]["p50"] >= 0
