"""`pgdurable bench fanout` (only when named): one parent fans out into N no-op children on the
bench queue and joins them, suspended meanwhile; N = 1,000 and 10,000 (`--children`).

Each line reports, against the same N no-op runs enqueued with `enqueue_many` and drained by
the same workers (its reference line, measured right before it): children per second from the
parent's start to its finish, and the parent's wake-up latency from the last child's finish to
its join being recorded (the claim and replay after the wake-up included).
"""

from __future__ import annotations

import dataclasses
import functools

from pgdurable_bench.measure import BenchError
from pgdurable_bench.scenarios import (
    Env,
    Line,
    Probe,
    _enqueue_many,
    _lifecycle,
    wait_workers,
    worker_args,
)

SCENARIO = "fanout"
SIZES = (1_000, 10_000)  # the default of --children


def _drain(env: Env, children: int) -> Line:
    sized = dataclasses.replace(env, settings=dataclasses.replace(env.settings, n=children))
    line = _lifecycle(sized, SCENARIO, f"drain {children}",
                      functools.partial(_enqueue_many, sized, 0, children),
                      worker_args(sized, "--exit-when-idle"), "workflow_stats", "unfinished")
    line.reference = None  # the reference of the fan-out line below
    return line


def _fan(env: Env, children: int) -> Line:
    label = f"fanout {children}"
    env.begin(label)
    env.reset()
    probe = Probe(env)
    env.bench.queue.enqueue(env.bench.app.resolve("bench.fanout"), env.settings.payload,
                            children)
    procs = [env.procs.spawn(worker_args(env, "--exit-when-idle"))
             for _ in range(env.settings.workers)]
    wait_workers(env, procs, label)
    measured = probe.stop()
    stats = env.one("fanout_stats")
    if stats["status"] != "succeeded" or stats["children_ok"] != children:
        raise BenchError(f"{label}: the parent is {stats['status']}, "
                         f"{stats['children_ok']} of {children} children succeeded")
    env.end()
    seconds = float(stats["seconds"])
    wake = float(stats["wake_ms"])
    return Line(SCENARIO, label, "children/s", children,
                dataclasses.replace(measured, seconds=seconds), children / seconds,
                {"wake": {"p50": wake, "p95": wake, "p99": wake}}, f"drain {children}")


def fanout(env: Env) -> list[Line]:
    lines = []
    for size in env.settings.fanout_children:
        lines += [_drain(env, size), _fan(env, size)]
    return lines
