"""Calling the PL/pgSQL functions directly: the session clock, rows as dicts, SQLSTATE checks,
and one thin wrapper per SQL function the tests call (runs, steps, queues, recovery,
schedules). Keyword options are the SQL parameters without their `p_` prefix."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from pgdurable.core import cron

Conn = psycopg.Connection[Any]
Row = dict[str, Any]

# The instant the clock-driven tests start at: a Tuesday, in winter (UTC+1 in Europe/Paris).
T0 = datetime(2030, 1, 1, tzinfo=UTC)
NO_INPUTS: dict[str, Any] = {"args": [], "kwargs": {}}


def at(seconds: float) -> datetime:
    """T0 plus `seconds`."""
    return T0 + timedelta(seconds=seconds)


def minute(n: int) -> datetime:
    """T0 plus `n` minutes."""
    return T0 + timedelta(minutes=n)


def set_now(conn: Conn, when: datetime | None) -> None:
    """Move this session's `pgdurable.now()` (None: back to the wall clock)."""
    conn.execute(
        "select set_config('pgdurable.now', %s, false)",
        ("" if when is None else when.isoformat(),),
    )


def call(conn: Conn, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[Row]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description is not None else []


def scalar(conn: Conn, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> Any:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


def count(conn: Conn, table: str) -> int:
    return int(scalar(conn, f"select count(*) from {table}"))


@contextmanager
def sqlstate(code: str, conn: Conn | None = None) -> Iterator[None]:
    """Expect the block to raise a database error with this SQLSTATE. With `conn`, the block
    runs in a savepoint of it, so an enclosing transaction stays usable."""
    with pytest.raises(psycopg.Error) as info:
        if conn is None:
            yield
        else:
            with conn.transaction():
                yield
    assert info.value.sqlstate == code, f"expected {code}, got {info.value.sqlstate}: {info.value}"


def _jsonb(value: Any) -> Jsonb | None:
    return None if value is None else Jsonb(value)


def _named(fn: str, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """`pgdurable.fn(p_a => %(a)s, ...)` for keyword arguments."""
    params = {k: Jsonb(v) if k == "inputs" and not isinstance(v, Jsonb) else v
              for k, v in args.items()}
    sql = ", ".join(f"p_{k} => %({k})s" for k in args)
    return f"pgdurable.{fn}({sql})", params


# -- runs and steps -------------------------------------------------------------------------------


def start(
    conn: Conn,
    wid: str = "w1",
    name: str = "flow",
    owner: str = "worker-a",
    lease: float | None = 30.0,
    inputs: Any = None,
) -> Row:
    rows = call(
        conn,
        "select * from pgdurable.start_workflow(%s, %s, %s, %s, %s)",
        (wid, name, Jsonb(NO_INPUTS if inputs is None else inputs), owner, lease),
    )
    assert len(rows) == 1
    return rows[0]


def acquire(conn: Conn, wid: str, owner: str, lease: float | None = 30.0) -> list[Row]:
    return call(conn, "select * from pgdurable.acquire(%s, %s, %s)", (wid, owner, lease))


def resume(conn: Conn, wid: str, owner: str, lease: float | None = 30.0) -> list[Row]:
    return call(conn, "select * from pgdurable.resume(%s, %s, %s)", (wid, owner, lease))


def heartbeat(
    conn: Conn, owner: str, lease: float | None = 30.0, ids: list[str] | None = None
) -> int:
    """Renew `ids` (default: every run `owner` holds, as a worker executing all of them)."""
    if ids is None:
        ids = [r[0] for r in conn.execute(
            "select id from pgdurable.workflows where owner = %s", (owner,)).fetchall()]
    rows = call(conn, "select pgdurable.heartbeat(%s, %s, %s) as n", (owner, ids, lease))
    return int(rows[0]["n"])


def record(
    conn: Conn,
    wid: str,
    epoch: int | None,
    step_no: int,
    name: str,
    status: str | None = "done",
    output: Any = None,
    error: Any = None,
) -> Row:
    rows = call(
        conn,
        "select * from pgdurable.record_step(%s, %s, %s, %s, %s, %s, %s)",
        (wid, epoch, step_no, name, status, _jsonb(output), _jsonb(error)),
    )
    assert len(rows) == 1
    return rows[0]


def begin(conn: Conn, wid: str, epoch: int, step_no: int, name: str) -> Row:
    rows = call(
        conn, "select * from pgdurable.begin_step(%s, %s, %s, %s)", (wid, epoch, step_no, name)
    )
    assert len(rows) == 1
    return rows[0]


def finish(
    conn: Conn,
    wid: str,
    epoch: int | None,
    status: str | None = "succeeded",
    output: Any = None,
    error: Any = None,
) -> None:
    conn.execute(
        "select pgdurable.finish_workflow(%s, %s, %s, %s, %s)",
        (wid, epoch, status, _jsonb(output), _jsonb(error)),
    )


def cancel(conn: Conn, wid: str) -> str:
    return str(call(conn, "select pgdurable.cancel(%s) as s", (wid,))[0]["s"])


def load_steps(conn: Conn, wid: str, epoch: int) -> list[Row]:
    return call(conn, "select * from pgdurable.load_steps(%s, %s)", (wid, epoch))


def workflow(conn: Conn, wid: str) -> Row:
    rows = call(conn, "select * from pgdurable.workflows where id = %s", (wid,))
    assert len(rows) == 1, f"no workflow {wid!r}"
    return rows[0]


def steps(conn: Conn, wid: str) -> list[Row]:
    return call(
        conn, "select * from pgdurable.steps where workflow_id = %s order by step_no", (wid,)
    )


def fork(conn: Conn, wid: str, from_step: int | None, new_id: str | None = None,
         queue: str | None = None) -> str:
    return str(scalar(conn, "select pgdurable.fork(%s, %s, %s, %s)",
                      (wid, from_step, new_id, queue)))


def set_parent(conn: Conn, parent: str, *children: str) -> None:
    """Make `children` children of `parent` (as a child start will record it)."""
    conn.execute("update pgdurable.workflows set parent_id = %s where id = any(%s)",
                 (parent, list(children)))


# -- queues ---------------------------------------------------------------------------------------


def declare(conn: Conn, name: str, *, max_recoveries: int | None = None, **limits: Any) -> None:
    """pgdurable.declare_queue with keyword limits (concurrency=, rate_limit=, ...), and
    declare_queue_recoveries with `max_recoveries`."""
    expr, params = _named("declare_queue", {"name": name, **limits})
    call(conn, f"select {expr}", params)
    if max_recoveries is not None:
        conn.execute("select pgdurable.declare_queue_recoveries(%s, %s)", (name, max_recoveries))


def enqueue(conn: Conn, queue: str = "default", name: str = "flow", **options: Any) -> str:
    """pgdurable.enqueue with keyword options (id=, priority=, delay_seconds=, inputs=, ...)."""
    expr, params = _named("enqueue", {"queue": queue, "name": name, **options})
    return str(call(conn, f"select {expr} as id", params)[0]["id"])


def enqueue_many(conn: Conn, queue: str, name: str, inputs: list[Any], **options: Any
                 ) -> list[str]:
    args: dict[str, Any] = {"queue": queue, "name": name,
                            "inputs": [Jsonb(i) for i in inputs], **options}
    cols = ", ".join(
        f"p_{k} => %({k})s" + ("::jsonb[]" if k == "inputs" else "::text[]" if k == "ids" else "")
        for k in args
    )
    return [str(r["id"]) for r in call(conn, f"select id from pgdurable.enqueue_many({cols})",
                                       args)]


def claim(conn: Conn, worker: str, queues: list[str] | str = "default", max_runs: int = 10,
          lease: float = 30.0, names: list[str] | None = None) -> list[Row]:
    """Claim for `worker` (expired leases are requeued first, as a worker's sweep does)."""
    qs = [queues] if isinstance(queues, str) else queues
    return call(conn, "select * from pgdurable.claim(%s, %s, %s, %s, %s)",
                (worker, qs, max_runs, lease, names))


def claim_ids(conn: Conn, worker: str, queues: list[str] | str, max_runs: int = 10,
              **kw: Any) -> list[str]:
    return [str(r["id"]) for r in claim(conn, worker, queues, max_runs, **kw)]


def claim_one(conn: Conn, worker: str, queue: str = "default", lease: float = 30.0) -> Row:
    rows = claim(conn, worker, queue, 1, lease)
    assert len(rows) == 1, f"{worker} claimed {rows}"
    return rows[0]


def ready_ids(conn: Conn, queue: str | None = None) -> set[str]:
    rows = call(conn, "select workflow_id from pgdurable.ready where %(q)s::text is null "
                      "or queue = %(q)s", {"q": queue})
    return {str(r["workflow_id"]) for r in rows}


def notifications(listener: Conn, timeout: float = 0.2, expect: int | None = None) -> list[str]:
    """Notifications received within `timeout` (returning early once `expect` arrived)."""
    return [n.payload for n in listener.notifies(timeout=timeout, stop_after=expect)]


# -- recovery -------------------------------------------------------------------------------------


def requeue_expired(conn: Conn, queues: list[str] | None = None, limit: int = 100) -> int:
    return int(call(conn, "select pgdurable.requeue_expired(%s, %s) as n",
                    (queues, limit))[0]["n"])


def expire(conn: Conn, queues: list[str] | None = None, limit: int = 100) -> tuple[int, int]:
    """pgdurable.expire_leases: (requeued, dead_lettered)."""
    row = call(conn, "select * from pgdurable.expire_leases(%s, %s)", (queues, limit))[0]
    return int(row["requeued"]), int(row["dead_lettered"])


def sweep(conn: Conn, limit: int = 100, retention: float = 86400.0) -> dict[str, int]:
    counts: dict[str, int] = scalar(conn, "select pgdurable.recover_sweep(%s, %s)",
                                    (limit, retention))
    return counts


# -- schedules ------------------------------------------------------------------------------------


def declare_schedule(conn: Conn, name: str, expression: str, *, workflow_name: str = "flow",
                     queue: str = "default", inputs: Any = None, timezone: str = "UTC",
                     catch_up: bool = False) -> None:
    """pgdurable.declare_schedule with the sets parsed as the Python client does."""
    spec = cron.parse(expression)
    conn.execute(
        "select pgdurable.declare_schedule(%s, %s, %s, %s, %s, %s, %s, %s::smallint[], "
        "%s::smallint[], %s::smallint[], %s::smallint[], %s::smallint[], %s, %s)",
        (name, expression, workflow_name, queue, Jsonb(NO_INPUTS if inputs is None else inputs),
         timezone, catch_up, list(spec.minutes), list(spec.hours), list(spec.days),
         list(spec.months), list(spec.weekdays), spec.days_restricted,
         spec.weekdays_restricted))


def fire(conn: Conn, limit: int = 1000) -> int:
    return int(scalar(conn, "select pgdurable.fire_schedules(%s)", (limit,)))


def tick_id(name: str, tick: datetime) -> str:
    return f"schedule:{name}:{tick.astimezone(UTC):%Y-%m-%dT%H:%MZ}"


def scheduled_ids(conn: Conn, name: str | None = None) -> list[str]:
    prefix = "schedule:" + (f"{name}:" if name else "")
    rows = conn.execute("select id from pgdurable.workflows where starts_with(id, %s) "
                        "order by id", (prefix,))
    return [str(r[0]) for r in rows]


def last_tick(conn: Conn, name: str) -> datetime:
    value: datetime = scalar(conn, "select last_tick from pgdurable.schedules where name = %s",
                             (name,))
    return value
