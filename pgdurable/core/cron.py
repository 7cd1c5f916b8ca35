"""Cron expressions: parsed and validated here, matched in SQL (pgdurable.cron_matches).

Five fields, `minute hour day-of-month month day-of-week`, each `*`, a number, a range `a-b`,
a step `*/n` or `a-b/n`, or a comma list of those; month and weekday names (`jan`, `mon`) are
accepted, weekday 7 is Sunday like 0. Aliases: @yearly, @annually, @monthly, @weekly, @daily,
@midnight, @hourly. As in cron, when both day fields are restricted a day matching either fires.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgdurable.core.errors import InvalidArgument

_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = {m: i for i, m in enumerate(
    ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1)}
_WEEKDAYS = {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
# (name, low, high, names)
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 7, _WEEKDAYS),
)


@dataclass(frozen=True)
class CronSpec:
    expression: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    weekdays: tuple[int, ...]
    days_restricted: bool
    weekdays_restricted: bool


def parse(expression: str) -> CronSpec:
    """Parse a cron expression, or raise InvalidArgument saying what is wrong with it."""
    if not isinstance(expression, str):
        raise InvalidArgument(f"a cron expression is a string, not {expression!r}")
    text = _ALIASES.get(expression.strip().lower(), expression.strip())
    parts = text.split()
    if len(parts) != 5:
        raise InvalidArgument(
            f"cron expression {expression!r} needs 5 fields "
            f"(minute hour day-of-month month day-of-week), found {len(parts)}"
        )
    values = [_field(expression, part, *spec) for part, spec in zip(parts, _FIELDS, strict=True)]
    weekdays = tuple(sorted({0 if d == 7 else d for d in values[4]}))
    return CronSpec(
        expression=expression,
        minutes=values[0], hours=values[1], days=values[2], months=values[3], weekdays=weekdays,
        days_restricted=parts[2] != "*", weekdays_restricted=parts[4] != "*",
    )


def _field(expression: str, text: str, name: str, low: int, high: int,
           names: dict[str, int]) -> tuple[int, ...]:
    found: set[int] = set()
    for item in text.lower().split(","):
        base, _, step_text = item.partition("/")
        step = _number(expression, name, step_text, names={}) if step_text else 1
        if step < 1:
            raise InvalidArgument(f"cron expression {expression!r}: {name} step must be >= 1")
        if base == "*":
            start, end = low, high
        elif "-" in base:
            first, _, last = base.partition("-")
            start = _number(expression, name, first, names)
            end = _number(expression, name, last, names)
        else:
            start = _number(expression, name, base, names)
            end = high if step_text else start
        if not low <= start <= end <= high:
            raise InvalidArgument(
                f"cron expression {expression!r}: {name} {item!r} is outside {low}-{high}"
            )
        found.update(range(start, end + 1, step))
    return tuple(sorted(found))


def _number(expression: str, name: str, text: str, names: dict[str, int]) -> int:
    if text in names:
        return names[text]
    if not (text.isascii() and text.isdigit()):  # not '²' and other Unicode digits
        raise InvalidArgument(f"cron expression {expression!r}: bad {name} value {text!r}")
    return int(text)
