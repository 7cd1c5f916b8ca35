"""The objects that `@app.workflow()`, `@app.step()` and `@app.transaction()` return.

Each is the core definition of its function (name, annotated signature, policy) that also knows
its App, and decides at call time whether the call is durable (inside a running workflow) or
plain (outside one).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar

import psycopg

from pgdurable.core.definitions import (
    RetryPolicy,
    StepDefinition,
    TransactionDefinition,
    WorkflowDefinition,
)
from pgdurable.runtime import context, steps

if TYPE_CHECKING:
    from pgdurable.api.app import App
    from pgdurable.api.handles import WorkflowHandle

P = ParamSpec("P")
R = TypeVar("R")

__all__ = ["RetryPolicy", "StepFunction", "TransactionFunction", "WorkflowFunction"]


class WorkflowFunction(WorkflowDefinition, Generic[P, R]):
    """A function registered with `@app.workflow()`.

    Calling it starts it durably and waits for its result, like `app.start(fn, ...).result()`:
    outside a workflow in this process; inside one as a checkpointed child workflow, the
    caller suspended until it ends.
    """

    fn: Callable[P, R]

    def __init__(
        self, app: App, fn: Callable[P, R], name: str, *, max_attempts: int = 1,
        retry_backoff: float = 1.0, timeout: float | None = None,
    ) -> None:
        super().__init__(fn, name, max_attempts=max_attempts, retry_backoff=retry_backoff,
                         timeout=timeout)
        self.app = app
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        handle: WorkflowHandle[R] = self.app.start_run(self, args, kwargs)
        return handle.result()


class StepFunction(StepDefinition, Generic[P, R]):
    """A function registered with `@app.step()`: checkpointed when called inside a workflow,
    a plain call outside one."""

    fn: Callable[P, R]

    def __init__(
        self, app: App, fn: Callable[P, R], name: str, policy: RetryPolicy, at_most_once: bool,
        timeout: float | None = None,
    ) -> None:
        super().__init__(fn, name, policy, at_most_once, timeout)
        self.app = app
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        ctx = context.current()
        if ctx is None or ctx.in_step:
            return self.fn(*args, **kwargs)
        result: R = steps.run_step(ctx, self, lambda: self.fn(*args, **kwargs))
        return result


class TransactionFunction(TransactionDefinition, Generic[P, R]):
    """A function registered with `@app.transaction()`. Its first parameter receives a psycopg
    connection inside a transaction; inside a workflow the step's checkpoint commits in that
    same transaction. Outside a workflow it runs in a transaction of its own."""

    fn: Callable[Concatenate[psycopg.Connection[Any], P], R]

    def __init__(
        self,
        app: App,
        fn: Callable[Concatenate[psycopg.Connection[Any], P], R],
        name: str,
        policy: RetryPolicy,
    ) -> None:
        super().__init__(fn, name, policy)
        self.app = app
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        ctx = context.current()
        if ctx is None or ctx.in_step:
            with self.app.db.connection() as conn, conn.transaction():
                return self.fn(conn, *args, **kwargs)
        result: R = steps.run_transaction(ctx, self, lambda conn: self.fn(conn, *args, **kwargs))
        return result
