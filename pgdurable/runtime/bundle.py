"""What the runtime is given by the App: a bundle of collaborators, never the App itself."""

from __future__ import annotations

from dataclasses import dataclass

from pgdurable.store.calls import Store
from pgdurable.store.completions import Completions
from pgdurable.store.database import Database


@dataclass(frozen=True)
class Runtime:
    """`db`: the pool (transaction steps take connections from it). `store`: the SQL calls
    (pooled). `completions`: the group commit of checkpoints and run
    endings. Leases: a run stays owned `lease_seconds` without a heartbeat; the process renews
    every `heartbeat_seconds`."""

    db: Database
    store: Store
    completions: Completions
    lease_seconds: float
    heartbeat_seconds: float
