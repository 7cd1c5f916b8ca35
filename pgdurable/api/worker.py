"""`pgdurable.Worker`: serve an App's queues in this process (the `pgdurable worker` command).

The loop itself is runtime/worker.py; this binds it to an App: which workflows it can run,
which queues it serves, the start-up checks, and optionally the recovery daemon beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pgdurable.core.errors import InvalidArgument, RegistrationError
from pgdurable.runtime.recovery import RecoveryDaemon, RecoverySettings
from pgdurable.runtime.worker import WorkerLoop

if TYPE_CHECKING:
    from pgdurable.api.app import App


class Worker(WorkerLoop):
    """Serves queues with up to `concurrency` runs at a time in this process.

    `queues`: names to serve (default: every queue the App declares, plus 'default').
    `poll_interval`: seconds between claims when idle, the fallback behind NOTIFY wake-ups.
    `exit_when_idle`: return as soon as nothing is claimable and nothing is running.
    `grace_seconds`: on stop, how long to let running executions finish before releasing them
    back to their queues.
    `recover`: also run the recovery daemon (leader-elected: one leads however many run) in
    this process while serving; True for the default settings, or RecoverySettings.
    """

    def __init__(
        self,
        app: App,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int = 16,
        poll_interval: float = 1.0,
        exit_when_idle: bool = False,
        grace_seconds: float = 30.0,
        recover: bool | RecoverySettings = False,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidArgument(f"concurrency must be an integer >= 1, not {concurrency!r}")
        if not poll_interval > 0 or not math.isfinite(poll_interval):
            raise InvalidArgument(f"poll_interval must be > 0, not {poll_interval!r}")
        if not grace_seconds >= 0:
            raise InvalidArgument(f"grace_seconds must be >= 0, not {grace_seconds!r}")
        if not isinstance(recover, bool | RecoverySettings):
            raise InvalidArgument(f"recover must be a bool or RecoverySettings, not {recover!r}")
        if not app.registry.workflows:
            raise RegistrationError("the App registers no workflows: nothing to run")
        super().__init__(
            queues=list(queues) if queues else sorted({"default", *app.registry.queues}),
            concurrency=concurrency, poll_interval=poll_interval,
            exit_when_idle=exit_when_idle, grace_seconds=grace_seconds)
        self.app = app
        self.recover = recover

    def run(self) -> None:
        """Serve until `stop()` (or until idle with `exit_when_idle`)."""
        app = self.app
        runtime = app.runtime  # connect, check the schema, declare the queues
        executor = app.executor
        # executions + claim + heartbeat + the group commit's connection
        runtime.db.ensure_pool_size(self.concurrency + 3)
        if executor.max_threads < self.concurrency:
            raise InvalidArgument(
                f"concurrency {self.concurrency} exceeds the App's max_threads "
                f"{executor.max_threads}"
            )
        existing = runtime.store.existing_queues(self.queues)
        unknown = [q for q in self.queues if q not in existing]
        if unknown:
            raise InvalidArgument(f"unknown queue(s): {', '.join(unknown)}")
        daemon: RecoveryDaemon | None = None
        if self.recover is not False:
            settings = self.recover if isinstance(self.recover, RecoverySettings) else None
            daemon = app.recovery(settings).start()
        try:
            self.serve(runtime, executor, app.registry.workflows)
        finally:
            if daemon is not None:
                daemon.stop()
