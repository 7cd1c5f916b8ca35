"""Rows of run state as the engine reads them back: pure values, shared by store and runtime."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RecordedStep:
    """A step outcome on record at `step_no` of a run."""

    step_no: int
    name: str
    status: str  # 'started' (at-most-once intent), 'done' or 'failed'
    output: Any
    error: dict[str, Any] | None


@dataclass(frozen=True)
class Execution:
    """A run this process now owns at `epoch` (started, acquired, resumed or claimed)."""

    workflow_id: str
    name: str
    epoch: int
    inputs: dict[str, Any]
    has_steps: bool = True  # False: its first execution ever, nothing to load
