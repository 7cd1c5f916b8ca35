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

from pgdurable.bench import bench_command

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


@pytest.mark.parametrize("args", [
    ["--n", "0"],
    ["--n", "-5"],
    ["--workers", "0"],
    ["--concurrency", "-1"],
    ["--steps", "-1"],
    ["--payload-bytes", "-1"],
    ["--repeat", "0"],
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
