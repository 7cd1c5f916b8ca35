"""Wake-ups by NOTIFY: a thread that LISTENs on its own connection and calls back for the
channels' payloads it is interested in. Polling covers any notification lost while it
reconnects."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection

from pgdurable.store.database import connect
from pgdurable.store.sql import query

log = logging.getLogger("pgdurable.worker")


class Listener:
    """Calls `on_wake()` for every notification whose payload is in `wanted` (a queue name),
    and once after each (re)connection, for anything sent while it was not listening."""

    def __init__(self, dsn: str, wanted: Collection[str], on_wake: Callable[[], None]) -> None:
        self.dsn = dsn
        self.wanted = frozenset(wanted)
        self.on_wake = on_wake
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._listen, name="pgdurable-listen", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def _listen(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            try:
                with connect(self.dsn) as conn:
                    conn.execute(query("listen"))
                    delay = 0.1
                    self.on_wake()  # anything enqueued while we were not listening
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            if note.payload in self.wanted:
                                self.on_wake()
            except Exception as exc:
                log.warning("listener lost its connection (%s); reconnecting", exc)
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
