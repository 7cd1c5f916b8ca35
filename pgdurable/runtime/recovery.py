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
from pgdurable.store.calls import Store
from pgdurable.store.database import connect

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
    return Store.of(conn).recover_sweep(settings.limit, settings.retention_seconds)


class RecoveryDaemon:
    """Runs sweeps while it is the leader; stands by otherwise. Survives connection loss and
    server restarts by reconnecting with backoff (stepping down meanwhile).

    `run()` serves in the calling thread until `stop()`; `start()` serves in a background
    thread instead (a service embedding its worker: `app.recovery().start()`, or
    `Worker(app, recover=True)`)."""

    def __init__(self, dsn: str, settings: RecoverySettings | None = None) -> None:
        self.dsn = dsn
        self.settings = settings or RecoverySettings()
        self.is_leader = False
        self.sweeps = 0
        self.totals: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> RecoveryDaemon:
        """Serve in a daemon thread of this process; returns self (stop it with `stop()`)."""
        if self._thread is not None:
            raise InvalidArgument("this recovery daemon was started already")
        self._thread = threading.Thread(target=self._run_logged, name="pgdurable-recovery",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop serving (a leader releases its lock with its connection). Waits up to
        `timeout` for a background thread started by `start()`."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run_logged(self) -> None:
        try:
            self.run()
        except Exception:
            log.exception("the recovery daemon stopped")

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
                self.is_leader = Store.of(conn).recovery_leader_lock()
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
