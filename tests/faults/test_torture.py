"""Torture run: many three-step workflows on a queue served by three worker processes (each
with the embedded recovery daemon), while worker processes are killed with SIGKILL at random
moments (and restarted) and PostgreSQL is restarted in immediate mode.

Afterwards: every workflow finished within 60 s of the last fault and succeeded; exactly one
business row per workflow, the one its transaction step recorded; every recorded step output
is the one the workflow returned; the side-effect log has at least one entry per plain step
(duplicates are counted and printed).
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.processes import Proc, processes
from tests.support.waiting import wait_until

from .helpers import TORTURE_SCHEMA, worker
from .restart import connect, restartable_database

Conn = psycopg.Connection[Any]
FINISH_WITHIN = 60.0  # seconds after the last fault
TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class Report:
    runs: int
    kills: int = 0
    restarts: int = 0
    cut_off_by_kills: int = 0  # runs held by a worker when it was killed
    restart_seconds: list[float] = field(default_factory=list)
    finished_after_last_fault: float = 0.0
    duplicates: int = 0  # side-effect log entries beyond the first per workflow
    most_effects: int = 0
    recoveries: int = 0  # lease expiries survived, summed over the runs
    failed: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        restarts = ", ".join(f"{s:.2f}s" for s in self.restart_seconds)
        return (f"torture: {self.runs} runs, {self.kills} kills ({self.cut_off_by_kills} runs "
                f"cut off), {self.restarts} PostgreSQL restarts ({restarts}); all finished "
                f"{self.finished_after_last_fault:.1f}s after the last fault; side-effect "
                f"duplicates: {self.duplicates} (at most {self.most_effects} entries for one "
                f"run); recoveries: {self.recoveries}; failed: {len(self.failed)}")


class Monitor:
    """The test's own view of the database, reconnecting after a server restart."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn = connect(dsn)

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        for attempt in range(2):
            try:
                return self.conn.execute(sql, params).fetchall()
            except psycopg.OperationalError:
                if attempt:
                    raise
                self.conn.close()
                self.conn = connect(self.dsn)
        raise AssertionError("unreachable")

    def statuses(self) -> dict[str, int]:
        return {str(s): int(n) for s, n in self.rows(
            "select status, count(*) from pgdurable.workflows where name = 'torture.flow' "
            "group by status")}

    def unfinished(self) -> int:
        counts = self.statuses()
        return sum(n for s, n in counts.items() if s not in TERMINAL)

    def held_by(self, pid: int) -> int:
        return int(self.rows("select count(*) from pgdurable.workflows where status = 'running' "
                             "and owner like %s", (f"%:{pid}:%",))[0][0])

    def transaction_step_in_flight(self) -> bool:
        """A transaction step that has written its business row and began less than 0.1 s
        ago, so it stays open for at least another 0.1 s (TORTURE_TXN_SECONDS >= 0.4)."""
        return bool(self.rows(
            "select count(*) from pg_stat_activity where datname = current_database() "
            "and backend_xid is not null and starts_with(query, 'insert into torture_business') "
            "and clock_timestamp() - xact_start < interval '0.1 s'")[0][0])

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def torture_db() -> Iterator[tuple[str, Callable[[], float]]]:
    with restartable_database(TORTURE_SCHEMA) as (dsn, restart):
        yield dsn, restart


def torture(dsn: str, restart: Callable[[], float], logdir: Path, *, runs: int, kills: int,
            restarts: int, concurrency: int, seed: int, gap: tuple[float, float],
            txn_seconds: float, step_seconds: float, lease: float = 5.0) -> Report:
    rng = random.Random(seed)
    report = Report(runs)
    env = {"TORTURE_LEASE_SECONDS": str(lease), "TORTURE_TXN_SECONDS": str(txn_seconds),
           "TORTURE_STEP_SECONDS": str(step_seconds)}
    monitor = Monitor(dsn)
    monitor.rows("select pgdurable.declare_queue('torture')")
    monitor.rows(
        "select count(pgdurable.enqueue('torture', 'torture.flow', jsonb_build_object("
        "'args', jsonb_build_array(n), 'kwargs', '{}'::jsonb), 'torture-' || n)) "
        "from generate_series(1, %s) n", (runs,))
    faults = ["kill"] * kills + ["restart"] * restarts
    rng.shuffle(faults)
    generation = 0

    def start(slot: int, procs: list[Proc]) -> Proc:
        nonlocal generation
        generation += 1
        proc = worker(dsn, logdir, f"torture-{slot}-{generation}", "--queue", "torture",
                      "--concurrency", str(concurrency), "--poll-interval", "0.2",
                      "--recover", **env)
        procs.append(proc)
        return proc

    try:
        with processes() as procs:
            slots = [start(k, procs) for k in range(3)]
            wait_until(lambda: monitor.statuses().get("succeeded", 0) > 0, timeout=60,
                       what="the workers to finish a first run")
            for n, fault in enumerate(faults, 1):
                time.sleep(rng.uniform(*gap))  # a random moment
                left = monitor.unfinished()
                assert left > 0, (f"all runs ended before fault {n} of {len(faults)}: the "
                                  f"workload is too short for its faults (seed {seed})")
                if fault == "kill":
                    k = rng.randrange(len(slots))
                    report.cut_off_by_kills += monitor.held_by(slots[k].pid)
                    slots[k].kill()
                    slots[k] = start(k, procs)  # restarted each time
                    report.kills += 1
                else:
                    # Restart while some transaction step is open: the case a crash of the
                    # server must not turn into a failed run.
                    wait_until(monitor.transaction_step_in_flight, timeout=20, interval=0.005,
                               what="a transaction step in flight")
                    report.restart_seconds.append(restart())
                    report.restarts += 1
            last_fault = time.monotonic()
            wait_until(lambda: monitor.unfinished() == 0, timeout=FINISH_WITHIN + 5,
                       interval=0.1, what="every run to finish after the last fault")
            report.finished_after_last_fault = time.monotonic() - last_fault
        check(monitor, report)
    finally:
        monitor.close()
    return report


def check(monitor: Monitor, report: Report) -> None:
    """Every invariant but "all succeeded", which is left to the caller (RunsFailed)."""
    runs = monitor.rows("select (inputs->'args'->>0)::int, id, status, output, error, "
                        "recoveries from pgdurable.workflows where name = 'torture.flow'")
    assert len(runs) == report.runs  # none lost
    steps: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for wid, step_no, name, status, output in monitor.rows(
            "select workflow_id, step_no, name, status, output from pgdurable.steps "
            "order by workflow_id, step_no"):
        steps[wid].append((step_no, name, status, output))
    business: dict[int, list[int]] = defaultdict(list)
    for n, row_id in monitor.rows("select n, id from torture_business order by id"):
        business[n].append(row_id)
    effects: dict[int, list[str]] = defaultdict(list)
    for n, token in monitor.rows("select n, token from torture_effects order by id"):
        effects[n].append(token)

    problems: list[str] = []
    for n, wid, status, output, error, recoveries in runs:
        report.recoveries += recoveries
        if len(business[n]) > 1:
            problems.append(f"{wid}: {len(business[n])} business rows {business[n]}")
        if status != "succeeded":
            kind = str((error or {}).get("type"))
            report.failed[wid] = f"{status}: {kind}: {(error or {}).get('message')}"
            continue
        expected = [(0, "torture.book", "done", output["business_id"]),
                    (1, "torture.log", "done", output["token"]),
                    (2, "torture.value", "done", output["value"])]
        if steps[wid] != expected:
            problems.append(f"{wid}: recorded steps {steps[wid]} but the workflow used {output}")
        if business[n] != [output["business_id"]]:
            problems.append(f"{wid}: business rows {business[n]}, used {output['business_id']}")
        if output["token"] not in effects[n]:
            problems.append(f"{wid}: the recorded side effect {output['token']} is not logged")
        if not effects[n]:
            problems.append(f"{wid}: no side-effect log entry")
    report.duplicates = sum(max(0, len(e) - 1) for e in effects.values())
    report.most_effects = max((len(e) for e in effects.values()), default=0)
    assert not problems, "\n".join(problems[:20])
    assert report.finished_after_last_fault <= FINISH_WITHIN


def assert_all_succeeded(report: Report) -> None:
    print(report.line())
    if report.failed:
        sample = "\n".join(f"  {wid}: {why}" for wid, why in list(report.failed.items())[:10])
        raise AssertionError(f"{len(report.failed)} of {report.runs} workflows did not succeed:"
                             f"\n{sample}")


def test_torture_kills_and_a_postgres_restart(
    torture_db: tuple[str, Callable[[], float]], tmp_path: Path
) -> None:
    dsn, restart = torture_db
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    report = torture(dsn, restart, tmp_path, runs=100, kills=3, restarts=1, concurrency=2,
                     seed=seed, gap=(0.5, 1.5), txn_seconds=0.4, step_seconds=0.2)
    assert report.kills == 3 and report.restarts == 1
    assert report.cut_off_by_kills > 0, "no kill hit a running workflow"
    assert_all_succeeded(report)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_torture_full(torture_db: tuple[str, Callable[[], float]], tmp_path: Path) -> None:
    """1,000 workflows, 20 kills, 2 PostgreSQL restarts."""
    dsn, restart = torture_db
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    report = torture(dsn, restart, tmp_path, runs=1000, kills=20, restarts=2, concurrency=4,
                     seed=seed, gap=(0.5, 2.0), txn_seconds=0.4, step_seconds=0.3)
    assert report.kills == 20 and report.restarts == 2
    assert_all_succeeded(report)
