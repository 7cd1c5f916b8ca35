"""What an App registers, without any database: workflow and step definitions, retry policies,
and the registry of names.

The api layer's decorators return subclasses of these that also know their App (to start runs
or open a connection); the runtime only needs what is here.
"""

from __future__ import annotations

import inspect
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Generic, TypeVar

from pgdurable.core.errors import (
    InvalidArgument,
    PgDurableError,
    RegistrationError,
    StepTimeout,
)
from pgdurable.core.serde import Signature


@dataclass(frozen=True)
class RetryPolicy:
    """How a failing step is retried: `retries` more attempts after the first, waiting
    `interval * backoff ** (n - 1)` seconds (capped at `max_interval`) before retry n, for
    exceptions that are instances of `retry_on`."""

    retries: int = 0
    interval: float = 1.0
    backoff: float = 2.0
    max_interval: float = 60.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) \
                or self.retries < 0:
            raise InvalidArgument(f"retries must be an integer >= 0, not {self.retries!r}")
        for name in ("interval", "max_interval"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise InvalidArgument(f"{name} must be a finite number >= 0, not {value!r}")
        if not math.isfinite(self.backoff) or self.backoff < 1:
            raise InvalidArgument(f"backoff must be a finite number >= 1, not {self.backoff!r}")
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in self.retry_on):
            raise InvalidArgument("retry_on must be a tuple of exception types")

    def delay_before(self, retry: int) -> float | None:
        """Seconds to wait before retry number `retry` (1-based), or None when out of retries."""
        if retry > self.retries:
            return None
        return min(self.interval * self.backoff ** (retry - 1), self.max_interval)

    def retries_on(self, exc: BaseException) -> bool:
        # pgdurable's own errors (fencing, non-determinism, serialisation) are never transient;
        # a step timeout is the step's own failure.
        return isinstance(exc, self.retry_on) and is_step_failure(exc)


def is_step_failure(exc: BaseException) -> bool:
    """Whether an exception raised by a step attempt is the step's outcome (recorded, retried
    per its policy) rather than one of pgdurable's own errors (fencing, serialisation, ...)."""
    return not isinstance(exc, PgDurableError) or isinstance(exc, StepTimeout)


def check_timeout(name: str, value: float | timedelta | None) -> float | None:
    """A timeout in seconds, validated: None (no timeout), or a finite number of seconds > 0
    (or a timedelta). InvalidArgument otherwise (bool, NaN, infinite, <= 0, not a number)."""
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) \
            or not math.isfinite(seconds) or seconds <= 0:
        raise InvalidArgument(f"{name} must be a finite number of seconds > 0, not {value!r}")
    return float(seconds)


class WorkflowDefinition:
    """A workflow function, its registered name, and its retry budget as a queued run."""

    def __init__(self, fn: Callable[..., Any], name: str, *, max_attempts: int = 1,
                 retry_backoff: float = 1.0, timeout: float | None = None) -> None:
        self.fn = fn
        self.name = name
        self.max_attempts = max_attempts
        self.retry_backoff = retry_backoff
        self.timeout = check_timeout("timeout", timeout)  # seconds for the whole run, or None
        self.signature = Signature(fn, f"workflow {name!r}")


class StepDefinition:
    """A step function: checkpointed when called inside a workflow."""

    def __init__(self, fn: Callable[..., Any], name: str, policy: RetryPolicy,
                 at_most_once: bool, timeout: float | None = None) -> None:
        self.fn = fn
        self.name = name
        self.policy = policy
        self.at_most_once = at_most_once
        self.timeout = check_timeout("timeout", timeout)  # seconds per attempt, or None
        self.signature = Signature(fn, f"step {name!r}")


class TransactionDefinition:
    """A transaction step: its first parameter is a connection inside the step's transaction."""

    at_most_once = False

    def __init__(self, fn: Callable[..., Any], name: str, policy: RetryPolicy) -> None:
        self.fn = fn
        self.name = name
        self.policy = policy
        self.signature = Signature(fn, f"transaction {name!r}", skip_first=True)


def default_name(fn: Callable[..., Any]) -> str:
    """`module.qualname`; for a script run as __main__, the script's file stem stands in for
    the module, so the name is the same when another process imports the file."""
    module = fn.__module__
    if module == "__main__":
        main = sys.modules["__main__"]
        spec = getattr(main, "__spec__", None)
        if spec is not None and spec.name:
            module = spec.name
        elif getattr(main, "__file__", None):
            module = Path(main.__file__ or "main").stem
    return f"{module}.{fn.__qualname__}"


W = TypeVar("W", bound=WorkflowDefinition)
S = TypeVar("S", bound=StepDefinition | TransactionDefinition)


@dataclass
class Registry(Generic[W, S]):
    """Workflows and steps by name. Names are shared: a step cannot take a workflow's name."""

    workflows: dict[str, W] = field(default_factory=dict)
    steps: dict[str, S] = field(default_factory=dict)

    def claim_name(self, name: str, kind: str, fn: Callable[..., Any] | None = None) -> None:
        if fn is not None and (inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)):
            raise RegistrationError(
                f"{kind} {name!r} is an async function: pgdurable runs plain functions only "
                "for now (call your async code with asyncio.run inside a plain step)"
            )
        if name in self.workflows or name in self.steps:
            raise RegistrationError(
                f"{kind} name {name!r} is already registered; pass name=... to tell them apart"
            )
