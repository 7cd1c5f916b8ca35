"""The objects that `@app.workflow()`, `@app.step()` and `@app.transaction()` return.

Each wraps the user's function, keeps its name and annotated signature, and decides at call time
whether the call is durable (inside a running workflow) or plain (outside one).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar

import psycopg

from pgdurable.core.errors import InvalidArgument, PgDurableError
from pgdurable.core.serde import Signature
from pgdurable.runtime import context, steps

if TYPE_CHECKING:
    from pgdurable.api.app import App
    from pgdurable.api.handles import WorkflowHandle

P = ParamSpec("P")
R = TypeVar("R")


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
        # pgdurable's own errors (fencing, non-determinism, serialisation) are never transient.
        return isinstance(exc, self.retry_on) and not isinstance(exc, PgDurableError)


class WorkflowFunction(Generic[P, R]):
    """A function registered with `@app.workflow()`.

    Calling it outside a workflow starts it durably in this process and waits for its result
    (like `app.start(fn, ...).result()`).
    """

    def __init__(
        self, app: App, fn: Callable[P, R], name: str, *, max_attempts: int = 1,
        retry_backoff: float = 1.0,
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.max_attempts = max_attempts
        self.retry_backoff = retry_backoff
        self.signature = Signature(fn, f"workflow {name!r}")
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        if context.current() is not None:
            raise PgDurableError(
                f"workflow {self.name!r} called from inside a running workflow: child workflows "
                "are not supported yet; call its steps directly or start it with app.start()"
            )
        handle: WorkflowHandle[R] = self.app.start_run(self, args, kwargs)
        return handle.result()


class StepFunction(Generic[P, R]):
    """A function registered with `@app.step()`: checkpointed when called inside a workflow,
    a plain call outside one."""

    def __init__(
        self, app: App, fn: Callable[P, R], name: str, policy: RetryPolicy, at_most_once: bool
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.policy = policy
        self.at_most_once = at_most_once
        self.signature = Signature(fn, f"step {name!r}")
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        ctx = context.current()
        if ctx is None or ctx.in_step:
            return self.fn(*args, **kwargs)
        result: R = steps.run_step(ctx, self, lambda: self.fn(*args, **kwargs))
        return result


class TransactionFunction(Generic[P, R]):
    """A function registered with `@app.transaction()`. Its first parameter receives a psycopg
    connection inside a transaction; inside a workflow the step's checkpoint commits in that
    same transaction. Outside a workflow it runs in a transaction of its own."""

    def __init__(
        self,
        app: App,
        fn: Callable[Concatenate[psycopg.Connection[Any], P], R],
        name: str,
        policy: RetryPolicy,
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.policy = policy
        self.signature = Signature(fn, f"transaction {name!r}", skip_first=True)
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        ctx = context.current()
        if ctx is None or ctx.in_step:
            with self.app.db.connection() as conn, conn.transaction():
                return self.fn(conn, *args, **kwargs)
        result: R = steps.run_transaction(ctx, self, lambda conn: self.fn(conn, *args, **kwargs))
        return result
