"""The raw-SQL yardstick of `pgdurable bench`: a worker process with no Python work beyond
issuing SQL. Run by the bench as `python -m pgdurable_bench.baseline MODE` with PGDURABLE_DSN
set to the bench database.

`drain`: like `pgdurable worker --exit-when-idle --concurrency C`: one thread claims batches
(`FOR UPDATE SKIP LOCKED LIMIT free`) from the small `bench.ready` table and hands the jobs to
C threads, each completing one job per commit; exits when nothing is claimable or running.

`listen`: like an idle worker: LISTEN, and on each notification claim and complete what is
ready; polls every 5 s as the fallback. Runs until killed.
"""

from __future__ import annotations

import argparse
import os
import queue
import threading
from typing import Any

import psycopg

from pgdurable_bench.sql import sql

LISTEN = "listen pgdurable_bench"


def _connect() -> psycopg.Connection[Any]:
    return psycopg.connect(os.environ["PGDURABLE_DSN"], autocommit=True)


class Drain:
    """The claim loop and completion threads of one baseline worker process."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.todo: queue.Queue[int | None] = queue.Queue()
        self.active = 0
        self.lock = threading.Lock()
        self.wake = threading.Event()

    def run(self) -> None:
        threads = [threading.Thread(target=self._complete, daemon=True)
                   for _ in range(self.concurrency)]
        for t in threads:
            t.start()
        # Same batching rule as pgdurable's worker: with work in hand, claim again once a
        # quarter of the slots are free.
        batch = max(1, self.concurrency // 4)
        with _connect() as conn:
            while True:
                self.wake.clear()
                with self.lock:
                    free = self.concurrency - self.active
                if free < batch and free < self.concurrency:
                    self.wake.wait(1.0)
                    continue
                rows = conn.execute(sql("raw_claim"), {"max": free}).fetchall()
                with self.lock:
                    self.active += len(rows)
                for row in rows:
                    self.todo.put(row[0])
                if not rows and self._idle():
                    break
                if not rows:
                    self.wake.wait(1.0)
        for _ in threads:
            self.todo.put(None)
        for t in threads:
            t.join()

    def _idle(self) -> bool:
        with self.lock:
            return self.active == 0

    def _complete(self) -> None:
        with _connect() as conn:
            while (job := self.todo.get()) is not None:
                conn.execute(sql("raw_complete"), {"id": job})  # autocommit: one commit each
                with self.lock:
                    self.active -= 1
                self.wake.set()


def listen(concurrency: int) -> None:
    with _connect() as listener, _connect() as conn:
        listener.execute(LISTEN)
        while True:
            for _ in listener.notifies(timeout=5.0, stop_after=1):
                break
            while rows := conn.execute(sql("raw_claim"), {"max": concurrency}).fetchall():
                for row in rows:
                    conn.execute(sql("raw_complete"), {"id": row[0]})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pgdurable_bench.baseline")
    parser.add_argument("mode", choices=["drain", "listen"])
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    if args.mode == "drain":
        Drain(args.concurrency).run()
    else:
        listen(args.concurrency)


if __name__ == "__main__":
    main()
