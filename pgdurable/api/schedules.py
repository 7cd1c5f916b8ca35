"""Cron schedules declared in code, stored in `pgdurable.schedules` when the App connects."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg

from pgdurable.core import cron
from pgdurable.core.errors import InvalidArgument
from pgdurable.store.calls import Store

if TYPE_CHECKING:
    from pgdurable.api.decorators import WorkflowFunction


@dataclass(frozen=True)
class Schedule:
    """Start `workflow` with fixed arguments on every tick of a cron expression."""

    name: str
    spec: cron.CronSpec
    workflow: WorkflowFunction[Any, Any]
    queue: str
    inputs: dict[str, Any]
    timezone: str
    catch_up: bool

    @classmethod
    def build(cls, name: str, expression: str, workflow: WorkflowFunction[Any, Any],
              args: tuple[Any, ...], kwargs: dict[str, Any], *, queue: str, timezone: str,
              catch_up: bool) -> Schedule:
        if not isinstance(name, str) or not name:
            raise InvalidArgument(f"a schedule needs a non-empty name, not {name!r}")
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise InvalidArgument(f"schedule {name!r}: unknown time zone {timezone!r}") from None
        return cls(name, cron.parse(expression), workflow, queue,
                   workflow.signature.encode_args(args, kwargs), timezone, bool(catch_up))

    def declare(self, store: Store) -> None:
        store.declare_schedule(self.name, self.spec, self.workflow.name, self.queue, self.inputs,
                               self.timezone, self.catch_up)


def declare_all(schedules: Iterable[Schedule], conn: psycopg.Connection[Any]) -> None:
    """Store every schedule on `conn` (while the App connects)."""
    store = Store.of(conn)
    for schedule in schedules:
        schedule.declare(store)
