"""Cron schedules declared in code, stored in `pgdurable.schedules` when the App connects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg

from pgdurable.core import cron
from pgdurable.core.errors import InvalidArgument
from pgdurable.store.database import jsonb, run_query

if TYPE_CHECKING:
    from pgdurable.api.app import App
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

    def declare(self, conn: psycopg.Connection[Any]) -> None:
        s = self.spec
        run_query(conn, "declare_schedule", {
            "name": self.name, "cron": s.expression, "workflow_name": self.workflow.name,
            "queue": self.queue, "inputs": jsonb(self.inputs), "timezone": self.timezone,
            "catch_up": self.catch_up, "minutes": list(s.minutes), "hours": list(s.hours),
            "days": list(s.days), "months": list(s.months), "weekdays": list(s.weekdays),
            "days_restricted": s.days_restricted,
            "weekdays_restricted": s.weekdays_restricted,
        })


def declare_all(app: App, conn: psycopg.Connection[Any]) -> None:
    for schedule in app.registry.schedules.values():
        schedule.declare(conn)
