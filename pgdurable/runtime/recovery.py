"""The recovery daemon: one leader sweeps expired leases, due timers, cron ticks and retention.

Leadership is a session-level advisory lock held on the daemon's own connection: if the
leader dies or loses its connection, PostgreSQL releases the lock and a standby takes over at
its next attempt (within one interval). Each sweep is one call of `pgdurable.recover_sweep`,
which is also safe to run concurrently or from pg_cron; the lock only avoids wasted work.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import psycopg

from pgdurable.core.errors import ConfigurationError, InvalidArgument, SchemaError
from pgdurable.store import migrate
from pgdurable.store.database import connect, run_query

log = logging.getLogger("pgdurable.recovery")

DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600.0


@dataclass
class RecoverySettings:
    interval: float = 1.0  # seconds between sweeps (and between leadership attempts)
    limit: int = 1000  # most rows each part of a sweep touches
    retention_seconds: float = DEFAULT_RETENTION_SECONDS  # finished runs older are deleted

    def __post_init__(self) -> None:
        if not math.isfinite(self.interval) or self.interval <= 0:
            raise InvalidArgument(f"interval must be > 0 seconds, not {self.interval!r}")
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit < 1:
            raise InvalidArgument(f"limit must be an integer >= 1, not {self.limit!r}")
        if not math.isfinite(self.retention_seconds) or self.retention_seconds <= 0:
            raise InvalidArgument(
                f"retention must be > 0 seconds, not {self.retention_seconds!r}"
            )


def sweep(conn: psycopg.Connection[Any], settings: RecoverySettings) -> dict[str, int]:
    """Run one bounded sweep and return its counts."""
    rows = run_query(conn, "recover_sweep",
                     {"limit": settings.limit, "retention_seconds": settings.retention_seconds})
    counts: dict[str, int] = rows[0]["counts"]
    return counts


class RecoveryDaemon:
    """Runs sweeps while it is the leader; stands by otherwise. Survives connection loss and
    server restarts by reconnecting with backoff (stepping down meanwhile)."""

    def __init__(self, dsn: str, settings: RecoverySettings | None = None) -> None:
        self.dsn = dsn
        self.settings = settings or RecoverySettings()
        self.is_leader = False
        self.sweeps = 0
        self.totals: dict[str, int] = {}
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            try:
                with connect(self.dsn) as conn:
                    migrate.check_schema(conn)
                    delay = 0.1
                    self._serve(conn)
            except (SchemaError, InvalidArgument):
                raise
            except (psycopg.Error, ConfigurationError, OSError) as exc:
                if self.is_leader:
                    log.warning("recovery leader lost its connection (%s): stepping down", exc)
                else:
                    log.warning("recovery daemon cannot reach the database (%s)", exc)
                self.is_leader = False
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)

    def _serve(self, conn: psycopg.Connection[Any]) -> None:
        while not self._stop.is_set():
            if not self.is_leader:
                self.is_leader = bool(run_query(conn, "recovery_leader_lock")[0]["leader"])
                if self.is_leader:
                    log.info("recovery daemon is now the leader")
            if self.is_leader:
                started = time.monotonic()
                counts = sweep(conn, self.settings)
                self.sweeps += 1
                for key, value in counts.items():
                    self.totals[key] = self.totals.get(key, 0) + value
                    if value:
                        log.info("recovery: %s %d", key.replace("_", " "), value)
                log.debug("sweep took %.1f ms", 1000 * (time.monotonic() - started))
            self._stop.wait(self.settings.interval)
