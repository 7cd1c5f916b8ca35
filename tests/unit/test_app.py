"""App without a database: names, registration, and argument checks that fail before any I/O.

Every App here points at a port where nothing listens: a test that reached the database would
fail with ConfigurationError instead of the error it expects.
"""

from __future__ import annotations

import math
import sys
import types
from importlib.machinery import ModuleSpec
from typing import Any

import pytest

import pgdurable
from pgdurable.api.app import default_name
from pgdurable.errors import InvalidArgument, RegistrationError, SerializationError

NOWHERE = "postgresql://nobody@127.0.0.1:1/nothing"


@pytest.fixture
def app() -> pgdurable.App:
    return pgdurable.App(NOWHERE)


def module_level(x: int) -> int:
    return x


def test_default_name_is_module_and_qualname() -> None:
    assert default_name(module_level) == f"{__name__}.module_level"

    class Holder:
        def method(self) -> None: ...

    assert default_name(Holder.method) == (
        f"{__name__}.test_default_name_is_module_and_qualname.<locals>.Holder.method")


def _main_function(monkeypatch: pytest.MonkeyPatch, main: types.ModuleType) -> Any:
    def script_fn() -> None: ...

    script_fn.__module__ = "__main__"
    monkeypatch.setitem(sys.modules, "__main__", main)
    return script_fn


def test_default_name_of_a_module_run_with_dash_m(monkeypatch: pytest.MonkeyPatch) -> None:
    main = types.ModuleType("__main__")
    main.__spec__ = ModuleSpec("shop.tasks", None)
    fn = _main_function(monkeypatch, main)
    assert default_name(fn) == f"shop.tasks.{fn.__qualname__}"


def test_default_name_of_a_script(monkeypatch: pytest.MonkeyPatch) -> None:
    main = types.ModuleType("__main__")
    main.__spec__ = None
    main.__file__ = "/srv/app/checkout_flow.py"
    fn = _main_function(monkeypatch, main)
    assert default_name(fn) == f"checkout_flow.{fn.__qualname__}"


def test_default_name_of_an_interactive_main(monkeypatch: pytest.MonkeyPatch) -> None:
    main = types.ModuleType("__main__")
    main.__spec__ = None
    fn = _main_function(monkeypatch, main)
    assert default_name(fn) == f"__main__.{fn.__qualname__}"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lease_seconds": 0},
        {"lease_seconds": -1},
        {"lease_seconds": math.nan},
        {"lease_seconds": math.inf},
        {"lease_seconds": 10, "heartbeat_seconds": 10},
        {"lease_seconds": 10, "heartbeat_seconds": 0},
        {"lease_seconds": 10, "heartbeat_seconds": 11},
        {"pool_size": 0},
        {"max_threads": 0},
    ],
)
def test_invalid_app_options(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        pgdurable.App(NOWHERE, **kwargs)


def test_heartbeat_defaults_to_a_third_of_the_lease() -> None:
    app = pgdurable.App(NOWHERE, lease_seconds=9)
    assert (app.lease_seconds, app.heartbeat_seconds) == (9.0, 3.0)


def test_registration_uses_default_or_given_names(app: pgdurable.App) -> None:
    @app.workflow()
    def flow() -> None: ...

    @app.step(name="custom.step")
    def step() -> None: ...

    assert flow.name == f"{__name__}.test_registration_uses_default_or_given_names.<locals>.flow"
    assert set(app.registry.workflows) == {flow.name}
    assert set(app.registry.steps) == {"custom.step"}
    assert vars(flow)["__name__"] == "flow"  # functools.wraps keeps the function's identity


def test_a_name_is_registered_once(app: pgdurable.App) -> None:
    @app.workflow(name="shared")
    def first() -> None: ...

    with pytest.raises(RegistrationError, match="'shared' is already registered"):
        @app.step(name="shared")
        def second() -> None: ...

    with pytest.raises(RegistrationError, match="already registered"):
        @app.workflow(name="shared")
        def third() -> None: ...

    assert app.registry.workflows["shared"] is first


def test_a_step_outside_a_workflow_is_a_plain_call(app: pgdurable.App) -> None:
    calls: list[int] = []

    @app.step(retries=3)
    def add(x: int) -> int:
        calls.append(x)
        return x + 1

    assert add(1) == 2
    assert calls == [1]


def test_start_refuses_bad_arguments_before_connecting(app: pgdurable.App) -> None:
    @app.workflow(name="typed")
    def typed(n: int) -> int:
        return n

    with pytest.raises(SerializationError, match="argument 'n' of workflow 'typed'"):
        app.start(typed, "not a number")
    with pytest.raises(SerializationError, match="argument 'n'"):
        app.start(typed, object())
    with pytest.raises(SerializationError, match="bad arguments for workflow 'typed'"):
        app.start(typed, 1, 2)
    with pytest.raises(InvalidArgument, match="workflow_id must be a non-empty string"):
        app.start(typed, 1, workflow_id="")
    assert not app.connected  # nothing connected


def test_start_refuses_unknown_workflows(app: pgdurable.App) -> None:
    @app.workflow(name="known")
    def known() -> None: ...

    other = pgdurable.App(NOWHERE)

    @other.workflow(name="foreign")
    def foreign() -> None: ...

    with pytest.raises(RegistrationError, match=r"no workflow named 'missing'.*known: known"):
        app.start("missing")
    with pytest.raises(RegistrationError, match="'foreign' belongs to another App"):
        app.start(foreign)
    with pytest.raises((RegistrationError, SerializationError), match=r"app\.start"):
        app.start(module_level)  # type: ignore[call-overload]
    assert not app.connected
