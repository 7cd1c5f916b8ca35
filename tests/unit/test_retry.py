"""RetryPolicy: delays, limits, validation, and which errors are retried."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import pgdurable
from pgdurable import errors
from pgdurable.api.decorators import RetryPolicy


def delays(policy: RetryPolicy, upto: int) -> list[float | None]:
    return [policy.delay_before(n) for n in range(1, upto + 1)]


def test_no_retries_by_default() -> None:
    policy = RetryPolicy()
    assert policy.delay_before(1) is None
    assert (policy.interval, policy.backoff, policy.max_interval) == (1.0, 2.0, 60.0)


def test_exponential_delays_capped_then_none() -> None:
    policy = RetryPolicy(retries=6, interval=0.5, backoff=3.0, max_interval=10.0)
    assert delays(policy, 8) == [0.5, 1.5, 4.5, 10.0, 10.0, 10.0, None, None]


def test_backoff_one_is_a_constant_interval() -> None:
    assert delays(RetryPolicy(retries=3, interval=2.0, backoff=1.0), 4) == [2.0, 2.0, 2.0, None]


def test_zero_interval_retries_immediately() -> None:
    assert delays(RetryPolicy(retries=2, interval=0.0), 3) == [0.0, 0.0, None]


def test_max_interval_below_interval_caps_the_first_delay() -> None:
    assert delays(RetryPolicy(retries=2, interval=5.0, max_interval=1.0), 2) == [1.0, 1.0]


@given(
    retries=st.integers(0, 20),
    interval=st.floats(0, 100),
    backoff=st.floats(1, 10),
    max_interval=st.floats(0, 1000),
)
def test_property_delays(retries: int, interval: float, backoff: float,
                         max_interval: float) -> None:
    policy = RetryPolicy(retries, interval, backoff, max_interval)
    got = delays(policy, retries + 2)
    assert got[retries:] == [None, None]
    for n, delay in enumerate(got[:retries], start=1):
        assert delay is not None
        assert delay == min(interval * backoff ** (n - 1), max_interval)
        assert 0 <= delay <= max_interval
    finite = [d for d in got if d is not None]
    assert finite == sorted(finite)  # never shrinks


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"retries": -1}, "retries must be an integer >= 0"),
        ({"retries": 1.5}, "retries must be an integer >= 0"),
        ({"interval": -0.1}, "interval must be a finite number >= 0"),
        ({"interval": math.nan}, "interval must be a finite number >= 0"),
        ({"interval": math.inf}, "interval must be a finite number >= 0"),
        ({"max_interval": -1.0}, "max_interval must be a finite number >= 0"),
        ({"max_interval": math.inf}, "max_interval must be a finite number >= 0"),
        ({"backoff": 0.5}, "backoff must be a finite number >= 1"),
        ({"backoff": math.nan}, "backoff must be a finite number >= 1"),
        ({"retry_on": (ValueError, "x")}, "retry_on must be a tuple of exception types"),
        ({"retry_on": (int,)}, "retry_on must be a tuple of exception types"),
    ],
)
def test_invalid_values_raise_invalid_argument(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(errors.InvalidArgument, match=message):
        RetryPolicy(**kwargs)


def test_a_bool_is_not_a_retry_count() -> None:
    with pytest.raises(errors.InvalidArgument):
        RetryPolicy(retries=True)


def test_the_decorators_validate_at_registration() -> None:
    app = pgdurable.App("postgresql://unused@127.0.0.1:1/x")
    with pytest.raises(errors.InvalidArgument, match="retries"):
        app.step(retries=-1)
    with pytest.raises(errors.InvalidArgument, match="backoff"):
        app.transaction(backoff=0)
    assert app.registry.steps == {}


def test_retry_on_selects_exception_types() -> None:
    policy = RetryPolicy(retries=3, retry_on=(ConnectionError, TimeoutError))
    assert policy.retries_on(ConnectionResetError())
    assert policy.retries_on(TimeoutError())
    assert not policy.retries_on(ValueError())


@pytest.mark.parametrize(
    "exc",
    [
        errors.FencedError("stale"),
        errors.NonDeterminismError("changed"),
        errors.SerializationError("no json"),  # also a TypeError
        errors.InvalidArgument("bad"),  # also a ValueError
        errors.WorkflowNotFound("gone"),  # also a LookupError
        errors.StepOutcomeUnknown("?"),
        errors.WorkflowCancelled("x"),
        errors.PgDurableError("base"),
    ],
)
def test_pgdurable_errors_are_never_retried(exc: errors.PgDurableError) -> None:
    for retry_on in [(Exception,), (BaseException,), (TypeError, ValueError, LookupError),
                     (errors.PgDurableError,), (type(exc),)]:
        assert not RetryPolicy(retries=5, retry_on=retry_on).retries_on(exc)
