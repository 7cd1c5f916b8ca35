"""The scenarios of `pgdurable bench`, each measured against a raw-SQL yardstick of the same run.

A scenario is a function `(Env) -> list[Line]`. Every measurement starts from empty tables
(`reset`), and reports wall time, CPU seconds of the client processes (this one and its worker
subprocesses, from getrusage), WAL bytes (pg_current_wal_lsn deltas) and latency percentiles
where they mean something. Lines name the line they are compared with (`reference`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import random
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from pgdurable_bench.app import FIXED_STEPS, QUEUE, BenchApp
from pgdurable_bench.measure import (
    BenchError,
    Latency,
    Measured,
    Processes,
    cpu_seconds,
    db_percentiles,
    percentiles,
    server_cpu_seconds,
)
from pgdurable_bench.sql import sql

Conn = psycopg.Connection[dict[str, Any]]

BASELINE = "baseline-sql"
BATCH = 1000  # enqueue_many batch size, the same for the raw INSERT
LATENCY_SAMPLES = 200  # at most this many one-at-a-time runs in `latency`
DIRECT_DEFAULT_STEPS = 10


@dataclass(frozen=True)
class Settings:
    n: int = 2000
    workers: int = 1
    concurrency: int = 16
    steps: int | None = None
    payload_bytes: int = 0
    repeat: int = 1
    backlog_rows: int = 1_000_000
    xmin_seconds: int = 60
    fanout_children: tuple[int, ...] = (1_000, 10_000)

    @property
    def queue_steps(self) -> tuple[int, ...]:
        return FIXED_STEPS if self.steps is None else (self.steps,)

    @property
    def direct_steps(self) -> int:
        return self.steps or DIRECT_DEFAULT_STEPS

    @property
    def payload(self) -> str:
        return "x" * self.payload_bytes

    @property
    def batch(self) -> int:
        return min(BATCH, self.n)


@dataclass
class Line:
    """One measurement of one run."""

    scenario: str
    name: str
    unit: str
    count: int
    measured: Measured
    throughput: float | None
    latency_ms: dict[str, Latency] = field(default_factory=dict)
    reference: str | None = None
    # What the ratio to `reference` compares: "throughput" (higher is better), or a latency
    # key whose p50 is compared (lower is better).
    metric: str = "throughput"
    # Scenario-specific figures (the backlog's table sizes and dead tuples, ...), JSON-ready.
    detail: dict[str, Any] | None = None


@dataclass
class Env:
    """What scenarios work with: the bench database, its App, worker processes, progress."""

    settings: Settings
    dsn: str
    conn: Conn
    bench: BenchApp
    procs: Processes
    begin: Callable[[str], None] = lambda _name: None  # a measurement starts
    end: Callable[[], None] = lambda: None  # a measurement is done
    tick: Callable[[str], None] = lambda _text: None  # in-flight status while waiting
    checkpoints: bool = True

    def rows(self, name: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        cur = self.conn.execute(sql(name), params)
        return cur.fetchall() if cur.description is not None else []

    def one(self, name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.rows(name, params)[0]

    def reset(self) -> None:
        """Empty tables, then checkpoint: every measurement starts right after a checkpoint,
        so full-page images weigh the same in each one's WAL (a checkpoint in the middle of
        one would inflate its WAL several times). Skipped without the privilege."""
        self.conn.execute(sql("reset"))
        if self.checkpoints:
            try:
                self.conn.execute(sql("checkpoint"))
            except psycopg.errors.InsufficientPrivilege:
                self.checkpoints = False


class Probe:
    """Wall time, client CPU, server CPU (local servers) and WAL written since it was made."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.lsn = env.one("wal_lsn")["lsn"]
        self.server_cpu = server_cpu_seconds(env.conn.info.backend_pid)
        self.cpu = cpu_seconds()
        self.wall = time.perf_counter()

    def stop(self) -> Measured:
        seconds = time.perf_counter() - self.wall
        cpu = cpu_seconds() - self.cpu
        server = server_cpu_seconds(self.env.conn.info.backend_pid)
        wal = int(self.env.one("wal_since", {"lsn": self.lsn})["bytes"])
        server_cpu = None if server is None or self.server_cpu is None \
            else server - self.server_cpu
        return Measured(seconds, cpu, server_cpu, wal)


# -- worker processes ---------------------------------------------------------------------------


def worker_args(env: Env, *extra: str) -> list[str]:
    return ["-m", "pgdurable.cli", "worker", "pgdurable_bench.app:app", "--queue", QUEUE,
            "--concurrency", str(env.settings.concurrency), *extra]


def _baseline_args(env: Env, mode: str) -> list[str]:
    return ["-m", "pgdurable_bench.baseline", mode,
            "--concurrency", str(env.settings.concurrency)]


def wait_workers(env: Env, procs: list[subprocess.Popen[bytes]], label: str) -> None:
    """Wait until every (exit-when-idle) worker has exited, reporting progress."""
    timeout = 120 + env.settings.n / 20
    deadline = time.monotonic() + timeout
    while any(p.poll() is None for p in procs):
        if time.monotonic() > deadline:
            left = env.one("ready_left")["n"]
            raise BenchError(f"{label}: workers did not finish within {timeout:.0f}s "
                             f"({left} runs still queued)")
        env.tick(f"{label}: {env.one('ready_left')['n']} queued")
        time.sleep(0.25)
    for p in procs:
        if p.returncode != 0:
            raise BenchError(f"{label}: a worker exited with code {p.returncode}: "
                             f"{env.procs.last_error(p)}")


def _wait_no_listener(env: Env, label: str) -> None:
    """Wait until no session of the bench database listens: the backend of a listener that was
    just stopped lingers for a moment, and must not be taken for the next one's."""
    deadline = time.monotonic() + 30
    while env.one("listening", {"query": "listen %"})["n"] > 0:
        if time.monotonic() > deadline:
            raise BenchError(f"{label}: an earlier listener is still connected after 30s")
        time.sleep(0.02)


def _wait_listening(env: Env, proc: subprocess.Popen[bytes], label: str) -> None:
    """Wait until the worker's LISTEN is in place (its listener session shows it)."""
    deadline = time.monotonic() + 60
    while env.one("listening", {"query": "listen %"})["n"] == 0:
        if proc.poll() is not None:
            raise BenchError(f"{label}: the worker exited with code {proc.returncode}: "
                             f"{env.procs.last_error(proc)}")
        if time.monotonic() > deadline:
            raise BenchError(f"{label}: the worker did not start listening within 60s")
        time.sleep(0.05)
    time.sleep(0.3)  # let its first claim and lease sweep pass: from now on it is idle


# -- enqueueing ---------------------------------------------------------------------------------


def _inputs(args: tuple[Any, ...]) -> Jsonb:
    """The jsonb a run's arguments are stored as, for the raw-SQL rows."""
    return Jsonb({"args": list(args), "kwargs": {}})


def _raw_enqueue(env: Env, count: int) -> None:
    """Bulk-insert `count` baseline jobs with the same payload rows as enqueue_many."""
    payload = _inputs((env.settings.payload,))
    for start in range(0, count, env.settings.batch):
        size = min(env.settings.batch, count - start)
        env.conn.execute(sql("raw_insert_many"), {"payloads": [payload] * size})


def _enqueue_many(env: Env, steps: int | None, count: int) -> None:
    """Queue `count` runs of the no-op workflow with `steps` steps (None: the transaction
    workflow) in enqueue_many batches."""
    bench = env.bench
    if steps is None:
        flow, args = bench.tx, (env.settings.payload,)
    else:
        flow, args = bench.flow_and_args(steps, env.settings.payload)
    for start in range(0, count, env.settings.batch):
        size = min(env.settings.batch, count - start)
        bench.queue.enqueue_many(flow, [args] * size)


# -- lifecycle scenarios: baseline-sql, queue, transaction ----------------------------------------


def stats_latency(stats: dict[str, Any]) -> dict[str, Latency]:
    keys = ("enqueue_to_start", "enqueue_to_finish", "start_to_finish")
    return {k: db_percentiles(stats[k]) for k in keys if stats[k]}


def _check_finished(env: Env, stats: dict[str, Any], label: str, failed_query: str | None
                    ) -> None:
    if stats["ok"] == env.settings.n and stats["total"] == env.settings.n:
        return
    detail = ""
    if failed_query is not None:
        row = env.one(failed_query)
        detail = f" ({row['statuses']}; first error: {row['first_error'] or 'none'})"
    raise BenchError(f"{label}: {stats['ok']} of {env.settings.n} runs succeeded{detail}")


def _lifecycle(env: Env, scenario: str, label: str, enqueue: Callable[[], None],
               worker: list[str], stats_query: str, failed_query: str | None) -> Line:
    """Enqueue N jobs, then drain them with W exit-when-idle worker processes."""
    env.begin(label)
    env.reset()
    probe = Probe(env)
    enqueue()
    procs = [env.procs.spawn(worker) for _ in range(env.settings.workers)]
    wait_workers(env, procs, label)
    measured = probe.stop()
    stats = env.one(stats_query, {"from_first_claim": True})
    try:
        _check_finished(env, stats, label, failed_query)
    except BenchError as exc:  # say what the workers said about it
        said = "; ".join(sorted({env.procs.last_error(p) for p in procs}))
        raise BenchError(f"{exc} (workers: {said})") from None
    # Throughput over the first claim to the last finish: worker start-up is not counted.
    window = stats["seconds"] or measured.seconds
    env.end()
    return Line(scenario, label, "jobs/s", env.settings.n,
                dataclasses.replace(measured, seconds=window),
                env.settings.n / window if window > 0 else None, stats_latency(stats),
                None if label == BASELINE else BASELINE)


def baseline_sql(env: Env) -> list[Line]:
    """The yardstick: enqueue -> claim -> complete in plain SQL, batched like pgdurable."""
    return [_lifecycle(env, BASELINE, BASELINE, lambda: _raw_enqueue(env, env.settings.n),
                       _baseline_args(env, "drain"), "job_stats", None)]


def queue(env: Env) -> list[Line]:
    """Queued no-op workflows with 0, 1, 3 (or --steps) steps, run by real workers."""
    lines = []
    for steps in env.settings.queue_steps:
        lines.append(_lifecycle(
            env, "queue", f"queue {steps}-step",
            functools.partial(_enqueue_many, env, steps, env.settings.n),
            worker_args(env, "--exit-when-idle"), "workflow_stats", "unfinished"))
    return lines


def transaction(env: Env) -> list[Line]:
    """Queued workflows whose one step is an @app.transaction inserting one row."""
    line = _lifecycle(env, "transaction", "transaction 1-step",
                      lambda: _enqueue_many(env, None, env.settings.n),
                      worker_args(env, "--exit-when-idle"), "workflow_stats", "unfinished")
    written = env.one("tx_rows")["n"]
    if written != env.settings.n:
        raise BenchError(f"transaction: {written} rows written for {env.settings.n} runs")
    return [line]


# -- enqueue ------------------------------------------------------------------------------------


def _timed_calls(env: Env, label: str, count: int, call: Callable[[], object],
                 reference: str | None) -> Line:
    env.begin(label)
    env.reset()
    times = []
    probe = Probe(env)
    for _ in range(count):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
    measured = probe.stop()
    env.end()
    return Line("enqueue", label, "jobs/s", count, measured, count / measured.seconds,
                {"call": percentiles(times)}, reference)


def _timed_bulk(env: Env, label: str, enqueue: Callable[[], None], reference: str | None
                ) -> Line:
    env.begin(label)
    env.reset()
    probe = Probe(env)
    enqueue()
    measured = probe.stop()
    env.end()
    n = env.settings.n
    return Line("enqueue", label, "jobs/s", n, measured, n / measured.seconds, {},
                reference)


def enqueue(env: Env) -> list[Line]:
    """One `q.enqueue` per round trip and `q.enqueue_many` in batches, each against a raw
    INSERT of the same rows."""
    s, bench = env.settings, env.bench
    flow, args = bench.flow_and_args(0, s.payload)
    raw_payload = _inputs(args)
    raw_one, raw_many = "raw insert single", f"raw insert x{s.batch}"
    return [
        _timed_calls(env, raw_one, s.n, lambda: env.conn.execute(
            sql("raw_insert_one"), {"payload": raw_payload}), None),
        _timed_calls(env, "enqueue single", s.n,
                     lambda: bench.queue.enqueue(flow, *args), raw_one),
        _timed_bulk(env, raw_many, lambda: _raw_enqueue(env, s.n), None),
        _timed_bulk(env, f"enqueue_many x{s.batch}", lambda: _enqueue_many(env, 0, s.n),
                    raw_many),
    ]


# -- direct -------------------------------------------------------------------------------------


def _raw_steps(env: Env, count: int, label: str) -> Line:
    """The floor of a durable step: one INSERT and one commit per step, one connection."""
    env.begin(label)
    env.reset()
    payload = env.settings.payload
    times = []
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        probe = Probe(env)
        for i in range(count):
            t0 = time.perf_counter()
            conn.execute(sql("raw_step"), {"step_no": i, "payload": payload})
            times.append((time.perf_counter() - t0) * 1000)
        measured = probe.stop()
    env.end()
    return Line("direct", label, "steps/s", count, measured, count / measured.seconds,
                {"step": percentiles(times)})


def _direct_runs(env: Env, steps: int, runs: int, reference: str) -> Line:
    label = f"direct {steps}-step"
    env.begin(label)
    env.reset()
    app = env.bench.app
    flow, args = env.bench.flow_and_args(steps, env.settings.payload)
    times = []
    probe = Probe(env)
    for _ in range(runs):
        t0 = time.perf_counter()
        app.start(flow, *args).result(timeout=60)
        times.append((time.perf_counter() - t0) * 1000)
    measured = probe.stop()
    latency = {"workflow": percentiles(times)}
    gaps = db_percentiles(env.one("step_gaps")["step"])
    if gaps:
        latency = {"step": gaps, **latency}
    env.end()
    count = runs * steps
    return Line("direct", label, "steps/s", count, measured, count / measured.seconds,
                latency, reference)


def direct(env: Env) -> list[Line]:
    """Workflows started in this process with `app.start`, K sequential steps each, one run at a
    time; against a raw psycopg loop committing one INSERT per step."""
    steps = env.settings.direct_steps
    runs = max(1, env.settings.n // steps)
    raw = "raw commit per step"
    return [_raw_steps(env, runs * steps, raw), _direct_runs(env, steps, runs, raw)]


# -- latency ------------------------------------------------------------------------------------


def _one_at_a_time(env: Env, samples: int, enqueue: Callable[[], Any], status_query: str,
                   done: str) -> None:
    """Enqueue runs one by one, each after the previous finished and a short random gap."""
    gaps = random.Random(0)
    for i in range(samples):
        ident = enqueue()
        deadline = time.monotonic() + 30
        while (status := env.one(status_query, {"id": ident})["status"]) != done:
            if status in ("failed", "cancelled"):
                raise BenchError(f"latency: run {ident} ended {status}")
            if time.monotonic() > deadline:
                raise BenchError(f"latency: run {i} did not finish within 30s")
            time.sleep(0.002)
        time.sleep(gaps.uniform(0.005, 0.025))


def _idle_latency(env: Env, label: str, worker: list[str], enqueue: Callable[[], Any],
                  stats: tuple[str, str, str], reference: str | None) -> Line:
    env.begin(label)
    env.reset()
    samples = min(env.settings.n, LATENCY_SAMPLES)
    _wait_no_listener(env, label)
    proc = env.procs.spawn(worker)
    try:
        _wait_listening(env, proc, label)
        probe = Probe(env)
        _one_at_a_time(env, samples, enqueue, stats[1], stats[2])
    finally:
        env.procs.stop(proc)
    measured = probe.stop()
    row = env.one(stats[0], {"from_first_claim": False})
    env.end()
    latency = {k: db_percentiles(row[k]) for k in ("enqueue_to_start", "enqueue_to_finish")}
    return Line("latency", label, "runs", samples, measured, None, latency, reference,
                "enqueue_to_start")


def latency(env: Env) -> list[Line]:
    """One idle worker that only NOTIFY can wake (poll interval 5 s): runs enqueued one at a
    time; enqueue -> start in ms. The yardstick is a raw LISTEN loop doing the same."""
    payload = env.settings.payload
    raw_payload = _inputs((payload,))
    flow, args = env.bench.flow_and_args(0, payload)
    raw = "raw listen loop"

    def raw_enqueue() -> Any:
        return env.one("raw_insert_notify", {"payload": raw_payload})["id"]

    def enqueue() -> Any:
        return env.bench.queue.enqueue(flow, *args).workflow_id

    return [
        _idle_latency(env, raw, _baseline_args(env, "listen"), raw_enqueue,
                      ("job_stats", "job_status", "done"), None),
        _idle_latency(env, "idle worker", worker_args(env, "--poll-interval", "5"),
                      enqueue, ("workflow_stats", "run_status", "succeeded"), raw),
    ]


Scenario = Callable[[Env], list[Line]]

# In the order they run. baseline-sql comes first: the other lifecycle lines compare with it.
SCENARIOS: dict[str, Scenario] = {
    "baseline-sql": baseline_sql,
    "enqueue": enqueue,
    "queue": queue,
    "direct": direct,
    "transaction": transaction,
    "latency": latency,
}

NEEDS_BASELINE = frozenset({"queue", "transaction"})


def planned_lines(name: str, settings: Settings) -> int:
    """How many lines scenario `name` measures (for the progress bar)."""
    return {"baseline-sql": 1, "enqueue": 4, "queue": len(settings.queue_steps), "direct": 2,
            "transaction": 1, "latency": 2}[name]


def child_env(dsn: str) -> dict[str, str]:
    """The environment of worker subprocesses: ours without any PGDURABLE_* setting that could
    change how they run, pointed at the bench database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGDURABLE_")}
    env["PGDURABLE_DSN"] = dsn
    return env
