"""Results of `pgdurable bench`: medians over repeats, ratios to the yardstick of the same run,
the JSON document and the human-readable table."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from pgdurable_bench.backlog import detail_text
from pgdurable_bench.measure import Latency
from pgdurable_bench.scenarios import Line

PERCENTILES = ("p50", "p95", "p99")
LATENCY_NAMES = {
    "enqueue_to_start": "enqueue→start",
    "enqueue_to_finish": "enqueue→finish",
    "start_to_finish": "start→finish",
    "call": "per call",
    "step": "per step",
    "workflow": "per workflow",
}


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _median_or_none(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _ratio(line: Line, ref: Line) -> float | None:
    """Ours relative to the reference of the same run: throughput ratio (higher is better),
    or for latency lines the ratio of the p50s (lower is better)."""
    if line.metric == "throughput":
        if line.throughput is None or not ref.throughput:
            return None
        return line.throughput / ref.throughput
    ours = line.latency_ms.get(line.metric, {}).get("p50")
    theirs = ref.latency_ms.get(line.metric, {}).get("p50")
    return ours / theirs if ours is not None and theirs else None


def _median_latency(lines: Sequence[Line]) -> dict[str, Latency]:
    merged: dict[str, Latency] = {}
    for key in lines[0].latency_ms:
        merged[key] = {
            p: statistics.median(line.latency_ms[key][p] for line in lines
                                 if p in line.latency_ms.get(key, {}))
            for p in PERCENTILES if all(p in line.latency_ms.get(key, {}) for line in lines)
        }
    return merged


def summarize(runs: Sequence[Sequence[Line]]) -> list[dict[str, Any]]:
    """One entry per line name (in measurement order): medians with min/max over the runs, and
    the median of the per-run ratios to the reference line."""
    names: dict[str, list[Line]] = {}
    ratios: dict[str, list[float]] = {}
    for run in runs:
        by_name = {line.name: line for line in run}
        for line in run:
            names.setdefault(line.name, []).append(line)
            ref = by_name.get(line.reference) if line.reference else None
            ratio = _ratio(line, ref) if ref is not None else None
            if ratio is not None:
                ratios.setdefault(line.name, []).append(ratio)
    return [_entry(lines, ratios.get(name)) for name, lines in names.items()]


def _median_tree(values: Sequence[Any]) -> Any:
    """The median of each number across the runs' details (same shape each run); anything else
    (text, null) from the first run."""
    known = [v for v in values if v is not None]
    if not known:
        return None
    first = known[0]
    if isinstance(first, dict):
        return {k: _median_tree([v.get(k) for v in known if isinstance(v, dict)]) for k in first}
    numbers = [v for v in known if isinstance(v, int | float) and not isinstance(v, bool)]
    if len(numbers) == len(known):
        return statistics.median(numbers)
    return first


def _entry(lines: list[Line], ratios: list[float] | None) -> dict[str, Any]:
    first = lines[0]
    throughputs = [line.throughput for line in lines if line.throughput is not None]
    ratio: dict[str, Any] | None = None
    if first.reference is not None and ratios:
        metric = "throughput" if first.metric == "throughput" else f"{first.metric} p50"
        ratio = {"reference": first.reference, "metric": metric, **_spread(ratios)}
    return {
        "scenario": first.scenario,
        "name": first.name,
        "is_reference": first.reference is None,
        "unit": first.unit,
        "count": first.count,
        "runs": len(lines),
        "throughput": _spread(throughputs) if throughputs else None,
        "ratio": ratio,
        "latency_ms": _median_latency(lines),
        "seconds": statistics.median(line.measured.seconds for line in lines),
        "cpu_s": statistics.median(line.measured.cpu_s for line in lines),
        "server_cpu_s": _median_or_none([line.measured.server_cpu_s for line in lines]),
        "wal_bytes_per_job": statistics.median(line.measured.wal_bytes / line.count
                                               for line in lines),
        "detail": _median_tree([line.detail for line in lines]),
    }


def rounded(value: Any, digits: int = 3) -> Any:
    """`value` with every float rounded (the JSON report does not need nanoseconds)."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v, digits) for v in value]
    return value


# -- text ---------------------------------------------------------------------------------------


def _num(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio_text(entry: dict[str, Any]) -> str:
    ratio = entry["ratio"]
    if ratio is None:
        return "reference"
    kind = "" if ratio["metric"] == "throughput" else " p50"
    return f"{ratio['median']:.2f}x{kind} of {ratio['reference']}"


def _latency_text(latency: dict[str, Latency]) -> str:
    parts = []
    for key, values in latency.items():
        if values:
            shown = "/".join(_num(values[p]) for p in PERCENTILES if p in values)
            parts.append(f"{LATENCY_NAMES.get(key, key)} {shown}")
    return "   ".join(parts)


def table(summary: Sequence[dict[str, Any]], header: Sequence[str]) -> str:
    """The human-readable report: one row per line, its latencies (ms, p50/p95/p99) below."""
    out = list(header)
    out.append("")
    out.append(f"{'LINE':<22} {'THROUGHPUT':>18} {'MIN-MAX':>17}  {'RATIO':<34} "
               f"{'CPU s':>6} {'SRV s':>6} {'WAL B/job':>9}")
    for e in summary:
        t = e["throughput"]
        speed = f"{_num(t['median'])} {e['unit']}" if t else f"{e['count']} {e['unit']}"
        spread = f"{_num(t['min'])}-{_num(t['max'])}" if t and e["runs"] > 1 else ""
        server = "-" if e["server_cpu_s"] is None else f"{e['server_cpu_s']:.2f}"
        out.append(f"{e['name']:<22} {speed:>18} {spread:>17}  {_ratio_text(e):<34} "
                   f"{e['cpu_s']:>6.2f} {server:>6} {e['wal_bytes_per_job']:>9,.0f}")
        if e["latency_ms"]:
            out.append(f"{'':<4}latency ms p50/p95/p99: {_latency_text(e['latency_ms'])}")
    backlog = [e for e in summary if e["scenario"] == "backlog" and e.get("detail")]
    if backlog:
        out.append("")
        out.append("backlog, before -> after the measured churn (medians):")
        for e in backlog:
            out.extend(detail_text(e))
    return "\n".join(out)
