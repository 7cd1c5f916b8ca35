"""The `backlog` scenario of `pgdurable bench`: does the hot claim path stay small with a large
standing backlog, and under churn while a long transaction holds the xmin horizon back?

Three lines, each the same measured workload: N queued no-op workflows (`enqueue_many`,
batches of 1000, on the bench's own session), then drained by W real `pgdurable worker`
processes; throughput from the first claim to the last finish of those N runs.

- `backlog fresh`: on empty tables; the reference of the other two.
- `backlog 1M queued`: while --backlog-rows other runs of the same workflow stand queued in the
  same queue, claimable, at a lower priority (1; the measured runs have the default 0). So the
  measured runs are claimed first, from the head of a million-row claim index, and the workers
  then go on with the backlog: they are stopped (SIGTERM, graceful) as soon as the N measured
  runs are finished. The backlog is filled through `pgdurable.enqueue_many` from SQL, then
  vacuumed and analyzed (what autovacuum would have done to a backlog that has stood a while).
- `backlog xmin held`: on empty tables, while another session of the bench database keeps a
  REPEATABLE READ snapshot open. The workload is repeated, round after round without a reset,
  until the snapshot has been held --xmin-seconds: every row version deleted or updated
  meanwhile stays behind as a dead tuple (vacuum must keep it for the snapshot). Throughput
  over all rounds; latencies of the last round; a VACUUM at the end, still under the hold,
  shows what vacuum could remove (nothing, when the hold works).

Every line reports before/after its churn: n_live_tup, n_dead_tup, table and index sizes of
pgdurable.ready and pgdurable.workflows, the claim's candidate scan (EXPLAIN ANALYZE: ms,
buffers) and, with the privilege to set track_functions, the workers' claim and finish_many
calls (pg_stat_user_functions: mean ms per call; percentiles would need the worker to time its
claims).
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql as pgsql
from psycopg.types.json import Jsonb

from pgdurable.api.decorators import WorkflowFunction
from pgdurable_bench.app import QUEUE
from pgdurable_bench.measure import BenchError, Latency, Measured
from pgdurable_bench.scenarios import Env, Line, Probe, stats_latency, wait_workers, worker_args
from pgdurable_bench.sql import sql

SCENARIO = "backlog"
LINES = 3
FRESH = "backlog fresh"
HELD = "backlog xmin held"
BACKLOG_PRIORITY = 1  # the measured runs have the default 0; lower numbers are claimed first
FILL_BATCH = 10_000   # runs per enqueue_many call (one transaction each) while filling ...
FILL_BYTES = 64 << 20  # ... or fewer, so that a batch's inputs stay under this size
POLL = 0.05           # seconds between progress checks while workers run
TABLE_FIELDS = ("n_live_tup", "n_dead_tup", "table_bytes", "index_bytes", "indexes")
# Cumulative counters of pg_stat_user_tables, reported as the change during the churn.
COUNTERS = {"n_tup_upd": "updates", "n_tup_hot_upd": "hot_updates", "n_tup_del": "deletes",
            "autovacuum_count": "autovacuums", "autoanalyze_count": "autoanalyzes"}


def queued_label(rows: int) -> str:
    """`backlog 1M queued` for the default backlog, `backlog 2k queued`, `backlog 1500 queued`."""
    for unit, size in (("M", 1_000_000), ("k", 1_000)):
        if rows >= size and rows % size == 0:
            return f"backlog {rows // size}{unit} queued"
    return f"backlog {rows} queued"


@dataclass
class Workload:
    """What every line runs, and what the worker claims with."""

    flow: WorkflowFunction[Any, Any]
    args: tuple[Any, ...]
    names: list[str]  # the workflow names a bench worker claims (its registry)
    track_functions: bool = False  # the workers' sessions count function calls


def _workload(env: Env) -> Workload:
    flow, args = env.bench.flow_and_args(env.settings.steps or 0, env.settings.payload)
    return Workload(flow, args, sorted(env.bench.app.registry.workflows))


# -- observing ----------------------------------------------------------------------------------


def _flush_stats(env: Env) -> None:
    """Our session's pending table statistics to shared memory now: its writes (enqueues, the
    fill) count at once, and a TRUNCATE's reset of the counts is not lost (it is when another
    transaction of the session commits before the flush, or a VACUUM reports first)."""
    try:
        env.rows("stats_flush")
    except psycopg.errors.UndefinedFunction:  # before PostgreSQL 15: up to 1 s behind
        pass


def _reset(env: Env) -> None:
    env.reset()
    _flush_stats(env)


def _tables(env: Env) -> dict[str, dict[str, Any]]:
    """pg_stat_user_tables counts and sizes of pgdurable.ready and pgdurable.workflows."""
    _flush_stats(env)
    return {row["table"]: {k: row[k] for k in (*TABLE_FIELDS, *COUNTERS)}
            for row in env.rows("backlog_tables")}


def _table_change(before: dict[str, Any] | None, after: dict[str, Any]) -> dict[str, Any]:
    """State before and after; counters as what changed in between."""
    before = before or {}
    return {"before": {k: before.get(k) for k in TABLE_FIELDS},
            "after": {k: after[k] for k in TABLE_FIELDS},
            "during": {name: after[k] - before.get(k, 0) for k, name in COUNTERS.items()}}


def _claim_probe(env: Env, work: Workload) -> dict[str, Any]:
    """EXPLAIN ANALYZE of the claim's candidate scan for one batch (what a claim call reads
    before it has its rows), in a transaction rolled back: nothing is claimed."""
    with env.conn.transaction(force_rollback=True):
        env.rows("claim_probe_setup")
        row = env.one("claim_probe", {"queue": QUEUE, "names": work.names,
                                      "limit": env.settings.concurrency})
    top = next(iter(row.values()))[0]
    plan = top["Plan"]
    return {"ms": top["Execution Time"], "rows": plan["Actual Rows"],
            "buffers": plan.get("Shared Hit Blocks", 0) + plan.get("Shared Read Blocks", 0)}


def _functions(env: Env) -> dict[str, tuple[int, float]]:
    return {r["name"]: (int(r["calls"]), float(r["total_time"]))
            for r in env.rows("backlog_functions")}


def _function_delta(work: Workload, before: dict[str, tuple[int, float]],
                    after: dict[str, tuple[int, float]], runs: int) -> dict[str, Any] | None:
    if not work.track_functions:
        return None
    out: dict[str, Any] = {}
    for name, (calls, total) in after.items():
        calls0, total0 = before.get(name, (0, 0.0))
        n = calls - calls0
        out[name] = {"calls": n, "ms_per_call": (total - total0) / n if n else None}
    if "claim" in out and out["claim"]["calls"]:
        out["claim"]["runs_per_call"] = runs / out["claim"]["calls"]
    return out


@dataclass
class Snapshot:
    tables: dict[str, dict[str, Any]]
    probe: dict[str, Any]
    functions: dict[str, tuple[int, float]]


def _snapshot(env: Env, work: Workload) -> Snapshot:
    return Snapshot(_tables(env), _claim_probe(env, work), _functions(env))


def _compare(work: Workload, before: Snapshot, after: Snapshot, runs: int) -> dict[str, Any]:
    return {
        "tables": {name: _table_change(before.tables.get(name), after.tables[name])
                   for name in sorted(after.tables)},
        "claim_probe": {"before": before.probe, "after": after.probe},
        "functions": _function_delta(work, before.functions, after.functions, runs),
    }


def _client_backends(env: Env) -> set[int]:
    return set(env.one("client_backends")["pids"])


def _wait_backends_gone(env: Env, known: set[int]) -> None:
    """Wait (up to 10 s) until the backends of exited workers are gone: a backend flushes its
    statistics as it exits, after its client has already disconnected."""
    deadline = time.monotonic() + 10
    while _client_backends(env) - known and time.monotonic() < deadline:
        time.sleep(0.02)


@contextmanager
def _tracked_functions(env: Env, work: Workload) -> Iterator[None]:
    """track_functions = 'pl' for the sessions the workers open during the scenario, when we
    may set it (superuser); reset afterwards, so no other scenario pays for the timing."""
    db = pgsql.Identifier(env.conn.info.dbname)
    try:
        env.conn.execute(pgsql.SQL(sql("track_functions_on")).format(name=db))
        work.track_functions = True
    except psycopg.errors.InsufficientPrivilege:
        work.track_functions = False
    try:
        yield
    finally:
        if work.track_functions:
            env.conn.execute(pgsql.SQL(sql("track_functions_off")).format(name=db))


# -- running the workload -----------------------------------------------------------------------


def _enqueue(env: Env, work: Workload) -> Any:
    """Queue the N measured runs; returns the server time just before (runs created at or
    after it are the measured ones)."""
    since = env.one("server_now")["now"]
    s = env.settings
    for start in range(0, s.n, s.batch):
        size = min(s.batch, s.n - start)
        env.bench.queue.enqueue_many(work.flow, [work.args] * size, conn=env.conn)
    return since


def _fill(env: Env, work: Workload) -> dict[str, Any]:
    """The standing backlog, through pgdurable.enqueue_many in batches; then vacuumed,
    analyzed and checkpointed, so the measurement starts from a settled table."""
    rows = env.settings.backlog_rows
    inputs = Jsonb(work.flow.signature.encode_args(work.args, {}))
    batch = max(1, min(FILL_BATCH, FILL_BYTES // (env.settings.payload_bytes + 100)))
    t0 = time.perf_counter()
    for start in range(0, rows, batch):
        size = min(batch, rows - start)
        env.rows("backlog_fill", {"queue": QUEUE, "name": work.flow.name, "inputs": inputs,
                                  "count": size, "priority": BACKLOG_PRIORITY})
        env.tick(f"backlog fill {start + size:,}/{rows:,}")
    fill = time.perf_counter() - t0
    _flush_stats(env)
    t0 = time.perf_counter()
    env.rows("backlog_vacuum")
    vacuum = time.perf_counter() - t0
    if env.checkpoints:
        env.rows("checkpoint")
    return {"fill_seconds": fill, "fill_rows_per_s": rows / fill if fill > 0 else None,
            "vacuum_seconds": vacuum}


def _backlog_rows(env: Env) -> int:
    return int(env.one("backlog_rows", {"queue": QUEUE, "priority": BACKLOG_PRIORITY})["n"])


def _stop(env: Env, procs: list[subprocess.Popen[bytes]], label: str) -> None:
    """SIGTERM every worker at once (graceful: running runs finish), then wait for them."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            env.procs.stop(p)
    for p in procs:
        if p.returncode != 0:
            raise BenchError(f"{label}: a worker exited with code {p.returncode}: "
                             f"{env.procs.last_error(p)}")


def _wait_done(env: Env, procs: list[subprocess.Popen[bytes]], since: Any, label: str) -> None:
    """Wait until the measured runs are finished (the workers go on with the backlog)."""
    timeout = 120 + env.settings.n / 20
    deadline = time.monotonic() + timeout
    while (row := env.one("runs_done", {"since": since}))["done"] < row["total"]:
        for p in procs:
            if p.poll() is not None:
                raise BenchError(f"{label}: a worker exited with code {p.returncode}: "
                                 f"{env.procs.last_error(p)}")
        if time.monotonic() > deadline:
            raise BenchError(f"{label}: the measured runs did not finish within {timeout:.0f}s "
                             f"({row['total'] - row['done']} left)")
        env.tick(f"{label}: {row['total'] - row['done']} to go")
        time.sleep(POLL)


def _drain(env: Env, since: Any, label: str, backlog: bool) -> dict[str, Any]:
    """Run W workers over the measured runs; returns their stats (checked: all succeeded).
    Without a backlog they exit when idle; with one they are stopped once the runs are done."""
    extra = () if backlog else ("--exit-when-idle",)
    procs = [env.procs.spawn(worker_args(env, *extra)) for _ in range(env.settings.workers)]
    if backlog:
        _wait_done(env, procs, since, label)
        _stop(env, procs, label)
    else:
        wait_workers(env, procs, label)
    stats = env.one("runs_stats", {"since": since})
    if stats["ok"] != env.settings.n or stats["total"] != env.settings.n:
        row = env.one("runs_unfinished", {"since": since})
        said = "; ".join(sorted({env.procs.last_error(p) for p in procs}))
        raise BenchError(f"{label}: {stats['ok']} of {env.settings.n} runs succeeded "
                         f"({row['statuses']}; first error: {row['first_error'] or 'none'}) "
                         f"(workers: {said})")
    return stats


def _line(env: Env, label: str, count: int, measured: Measured, window: float,
          latency: dict[str, Latency], reference: str | None, detail: dict[str, Any]) -> Line:
    return Line(SCENARIO, label, "jobs/s", count, dataclasses.replace(measured, seconds=window),
                count / window if window > 0 else None, latency, reference, detail=detail)


def _once(env: Env, work: Workload, label: str, backlog: bool,
          prepare: Callable[[], dict[str, Any]]) -> Line:
    """One round of the workload: `prepare` sets the tables up (after the reset)."""
    env.begin(label)
    _reset(env)
    detail = prepare()
    known = _client_backends(env)
    probe = Probe(env)
    since = _enqueue(env, work)
    before = _snapshot(env, work)
    stats = _drain(env, since, label, backlog)
    measured = probe.stop()
    _wait_backends_gone(env, known)
    after = _snapshot(env, work)
    n = env.settings.n
    if backlog:
        detail["backlog_rows"]["after"] = _backlog_rows(env)
        consumed = detail["backlog_rows"]["before"] - detail["backlog_rows"]["after"]
        claimed = n + consumed
    else:
        claimed = n
    detail.update(_compare(work, before, after, claimed))
    env.end()
    return _line(env, label, n, measured, stats["seconds"] or measured.seconds,
                 stats_latency(stats), None if label == FRESH else FRESH, detail)


def _fresh(env: Env, work: Workload) -> Line:
    return _once(env, work, FRESH, False, dict)


def _queued(env: Env, work: Workload) -> Line:
    def prepare() -> dict[str, Any]:
        fill = _fill(env, work)
        return {**fill, "backlog_rows": {"before": _backlog_rows(env), "after": None}}

    return _once(env, work, queued_label(env.settings.backlog_rows), True, prepare)


@contextmanager
def _xmin_holder(env: Env) -> Iterator[psycopg.Connection[Any]]:
    """A session of the bench database with a REPEATABLE READ snapshot held open."""
    conn = psycopg.connect(env.dsn, autocommit=False)
    try:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.execute(sql("xmin_hold"))
        if env.one("xmin_held", {"pid": conn.info.backend_pid})["xmin"] is None:
            raise BenchError(f"{HELD}: the holding session shows no xmin")
        yield conn
    finally:
        conn.close()  # rolls the transaction back: the horizon moves on


def _held(env: Env, work: Workload) -> Line:
    s = env.settings
    env.begin(HELD)
    _reset(env)
    with _xmin_holder(env) as holder:
        held_from = time.monotonic()
        known = _client_backends(env)
        probe = Probe(env)
        rounds: list[dict[str, Any]] = []
        before: Snapshot | None = None
        while not rounds or time.monotonic() - held_from < s.xmin_seconds:
            since = _enqueue(env, work)
            if before is None:
                before = _snapshot(env, work)
            rounds.append(_drain(env, since, HELD, False))
            env.tick(f"xmin held {time.monotonic() - held_from:.0f}/{s.xmin_seconds}s "
                     f"#{len(rounds)}")
        measured = probe.stop()
        _wait_backends_gone(env, known)
        after = _snapshot(env, work)
        xmin = env.one("xmin_held", {"pid": holder.info.backend_pid})
        held_seconds = time.monotonic() - held_from
        env.rows("backlog_vacuum_plain")
        left = {name: t["n_dead_tup"] for name, t in _tables(env).items()}
    count = s.n * len(rounds)
    window = sum(r["seconds"] or 0.0 for r in rounds) or measured.seconds
    first, last = (r["seconds"] for r in (rounds[0], rounds[-1]))
    detail: dict[str, Any] = {
        "xmin_held_seconds": held_seconds,
        "xmin_age": xmin["age"],  # transaction ids assigned while the snapshot was held
        "rounds": len(rounds),
        "runs": count,
        "first_round_jobs_per_s": s.n / first if first else None,
        "last_round_jobs_per_s": s.n / last if last else None,
        **_compare(work, before or after, after, count),
        "dead_after_vacuum_while_held": left,
    }
    env.end()
    return _line(env, HELD, count, measured, window, stats_latency(rounds[-1]), FRESH, detail)


def backlog(env: Env) -> list[Line]:
    """Throughput on fresh tables, with a standing backlog, and with xmin held (see above)."""
    work = _workload(env)
    with _tracked_functions(env, work):
        return [_fresh(env, work), _queued(env, work), _held(env, work)]


# -- text ---------------------------------------------------------------------------------------


def _n(value: Any) -> str:
    return "?" if value is None else f"{value:,.0f}"


def _mib(value: Any) -> str:
    return "?" if value is None else f"{value / 2**20:,.1f}"


def _pair(change: dict[str, Any] | None, key: str, fmt: Callable[[Any], str]) -> str:
    before, after = (change or {}).get("before") or {}, (change or {}).get("after") or {}
    return f"{fmt(before.get(key))} -> {fmt(after.get(key))}"


def detail_text(entry: dict[str, Any]) -> list[str]:
    """The before/after figures of a backlog line, for the text report."""
    d = entry.get("detail") or {}
    out = [f"  {entry['name']}"]
    rows = d.get("backlog_rows")
    if rows:
        out.append(f"    backlog {_n(rows.get('before'))} -> {_n(rows.get('after'))} runs queued "
                   f"(filled in {d['fill_seconds']:.1f} s, {_n(d['fill_rows_per_s'])} runs/s; "
                   f"vacuum analyze {d['vacuum_seconds']:.1f} s)")
    if "xmin_held_seconds" in d:
        out.append(f"    xmin held {d['xmin_held_seconds']:.1f} s ({_n(d['xmin_age'])} xids "
                   f"meanwhile), {d['rounds']:.0f} rounds, {_n(d['runs'])} runs: first round "
                   f"{_n(d['first_round_jobs_per_s'])} jobs/s, "
                   f"last {_n(d['last_round_jobs_per_s'])}")
    for name, change in (d.get("tables") or {}).items():
        during = change.get("during") or {}
        out.append(f"    {name:<10} live {_pair(change, 'n_live_tup', _n)}   "
                   f"dead {_pair(change, 'n_dead_tup', _n)}   "
                   f"table {_pair(change, 'table_bytes', _mib)} MiB   "
                   f"indexes {_pair(change, 'index_bytes', _mib)} MiB   "
                   f"updates {_n(during.get('updates'))} ({_n(during.get('hot_updates'))} HOT), "
                   f"deletes {_n(during.get('deletes'))}, "
                   f"autovacuum/analyze {_n(during.get('autovacuums'))}/"
                   f"{_n(during.get('autoanalyzes'))}")
    probe = d.get("claim_probe")
    if probe:
        out.append(f"    claim scan (EXPLAIN ANALYZE): {_pair(probe, 'ms', lambda v: f'{v:.2f}')}"
                   f" ms, {_pair(probe, 'buffers', _n)} buffers, "
                   f"{_pair(probe, 'rows', _n)} rows")
    functions = d.get("functions")
    if functions:
        parts = []
        for name, f in functions.items():
            ms = "?" if f.get("ms_per_call") is None else f"{f['ms_per_call']:.2f}"
            per = f" ({f['runs_per_call']:.1f} runs/call)" if f.get("runs_per_call") else ""
            parts.append(f"{name} {_n(f['calls'])} calls, {ms} ms/call{per}")
        out.append("    workers: " + "; ".join(parts))
    left = d.get("dead_after_vacuum_while_held")
    if left:
        out.append("    dead tuples a VACUUM under the hold left: "
                   + ", ".join(f"{k} {_n(v)}" for k, v in left.items()))
    return out
