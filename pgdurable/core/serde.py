"""JSON encoding driven by type annotations (pydantic), and structured error records.

Arguments are validated against their annotations and encoded when a run is started, so a bad
argument fails at the call site and nothing is written. Outputs are decoded back to the annotated
type on replay and in `handle.result()`. No pickle: everything stored is readable from SQL.
"""

from __future__ import annotations

import builtins
import decimal
import functools
import importlib
import inspect
import math
import traceback
import typing
from collections.abc import Callable
from functools import cached_property
from typing import Any

import pydantic
from pydantic_core import PydanticSerializationError

from pgdurable.core.errors import SerializationError, StepFailed

JSON = Any  # a value made of dict / list / str / int / float / bool / None


class Signature:
    """The annotated signature of one registered function, with cached pydantic adapters.

    `skip_first` drops the leading `conn` parameter of a transaction step.
    """

    def __init__(self, fn: Callable[..., Any], label: str, *, skip_first: bool = False) -> None:
        self.fn = fn
        self.label = label
        self.signature = inspect.signature(fn)
        params = list(self.signature.parameters.values())
        self.params = params[1:] if skip_first else params

    @cached_property
    def _hints(self) -> dict[str, Any]:
        # Resolved lazily: with `from __future__ import annotations` a forward reference may only
        # become resolvable after the decorated function's module finished importing.
        try:
            return typing.get_type_hints(self.fn, include_extras=True)
        except Exception as exc:
            raise SerializationError(
                f"cannot resolve the type annotations of {self.label}: {exc}"
            ) from exc

    @cached_property
    def _adapters(self) -> dict[str, pydantic.TypeAdapter[Any]]:
        return {p.name: _adapter(self._hints.get(p.name, Any)) for p in self.params}

    @cached_property
    def result_adapter(self) -> pydantic.TypeAdapter[Any]:
        return _adapter(self._hints.get("return", Any))

    @cached_property
    def _bind_signature(self) -> inspect.Signature:
        return self.signature.replace(parameters=self.params)

    @cached_property
    def _positional(self) -> list[Callable[[Any], Any]] | None:
        """Per parameter, an encoder for a positional argument, when every parameter can be
        given positionally (None otherwise: such calls take the general path). A str, int or
        bool argument of exactly its annotated type encodes as itself (what pydantic would
        return), without the round trip through pydantic."""
        encoders: list[Callable[[Any], Any]] = []
        for param in self.params:
            if param.kind not in (inspect.Parameter.POSITIONAL_ONLY,
                                  inspect.Parameter.POSITIONAL_OR_KEYWORD):
                return None
            encoders.append(self._arg_encoder(param.name))
        return encoders

    def _arg_encoder(self, name: str) -> Callable[[Any], Any]:
        hint = self._hints.get(name, Any)
        slow = functools.partial(self._encode_arg, name)
        if hint not in (str, int, bool):
            return slow

        def encode_simple(value: Any) -> Any:
            if type(value) is hint and not (hint is str and "\x00" in value):
                return value
            return slow(value)

        return encode_simple

    def encode_args(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, JSON]:
        """Validate and encode call arguments as {"args": [...], "kwargs": {...}}."""
        positional = self._positional
        if not kwargs and positional is not None and len(args) == len(positional):
            return {"args": [enc(value) for enc, value in zip(positional, args, strict=True)],
                    "kwargs": {}}
        signature = self._bind_signature
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise SerializationError(f"bad arguments for {self.label}: {exc}") from None
        encoded: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            kind = signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                encoded[name] = tuple(self._encode_arg(name, v) for v in value)
            elif kind is inspect.Parameter.VAR_KEYWORD:
                encoded[name] = {k: self._encode_arg(name, v) for k, v in value.items()}
            else:
                encoded[name] = self._encode_arg(name, value)
        rebound = inspect.BoundArguments(signature, encoded)  # type: ignore[arg-type,unused-ignore]
        return {"args": list(rebound.args), "kwargs": dict(rebound.kwargs)}

    def decode_args(self, inputs: dict[str, JSON]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Turn stored inputs back into call arguments of their annotated types."""
        signature = self._bind_signature
        try:
            bound = signature.bind(*inputs.get("args", []), **inputs.get("kwargs", {}))
        except TypeError as exc:
            raise SerializationError(f"stored inputs do not fit {self.label}: {exc}") from None
        for name, value in bound.arguments.items():
            kind = signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                bound.arguments[name] = tuple(self._decode_arg(name, v) for v in value)
            elif kind is inspect.Parameter.VAR_KEYWORD:
                bound.arguments[name] = {k: self._decode_arg(name, v) for k, v in value.items()}
            else:
                bound.arguments[name] = self._decode_arg(name, value)
        return bound.args, bound.kwargs

    def encode_result(self, value: Any) -> JSON:
        return encode(self.result_adapter, value, f"the return value of {self.label}")

    def decode_result(self, data: JSON) -> Any:
        return decode(self.result_adapter, data, f"the return value of {self.label}")

    def _encode_arg(self, name: str, value: Any) -> JSON:
        return encode(self._adapters[name], value, f"argument {name!r} of {self.label}")

    def _decode_arg(self, name: str, data: JSON) -> Any:
        return decode(self._adapters[name], data, f"argument {name!r} of {self.label}")


def _adapter(annotation: Any) -> pydantic.TypeAdapter[Any]:
    try:
        return pydantic.TypeAdapter(annotation)
    except Exception as exc:  # pydantic refuses types it cannot describe
        raise SerializationError(f"type {annotation!r} cannot be stored as JSON: {exc}") from exc


def encode(adapter: pydantic.TypeAdapter[Any], value: Any, what: str) -> JSON:
    """Validate `value` against the adapter's type and dump it to JSON-compatible data."""
    try:
        validated = adapter.validate_python(value)
        data = adapter.dump_python(validated, mode="json")
    except pydantic.ValidationError as exc:
        raise SerializationError(
            f"{what} is not a valid {_type_name(adapter)} "
            f"(got {type(value).__name__}): {_first_error(exc)}"
        ) from None
    except (PydanticSerializationError, TypeError, ValueError) as exc:
        raise SerializationError(
            f"{what} cannot be stored as JSON (got {type(value).__name__}): {exc}"
        ) from None
    problem = _unstorable(data)
    if problem:
        raise SerializationError(f"{what} cannot be stored in jsonb: {problem}")
    return data


def as_stored(data: JSON) -> JSON:
    """`data` as PostgreSQL gives it back after storing it as jsonb, without the round trip.

    jsonb orders object keys (shorter first, then bytewise) and keeps numbers as numeric: a
    float written with a positive exponent (`1e+16`) reads back as an integer, `-0.0` as
    `0.0`. A step whose checkpoint is written later (see steps.py) hands the workflow this
    value, so that a live execution sees exactly what a replay will read.
    """
    if data is None or data is True or data is False or isinstance(data, str | int):
        return data
    if isinstance(data, float):
        text = repr(data)
        if "e+" in text:
            return int(decimal.Decimal(text))
        return 0.0 if data == 0 else data
    if isinstance(data, list | tuple):
        return [as_stored(v) for v in data]
    if isinstance(data, dict):
        items = [(_json_key(k), as_stored(v)) for k, v in data.items()]
        items.sort(key=lambda kv: (len(kv[0].encode()), kv[0].encode()))
        return dict(items)
    return data


def _json_key(key: Any) -> str:
    """The object key json.dumps writes for a dict key."""
    if isinstance(key, str):
        return key
    if key is True or key is False or key is None:
        return {True: "true", False: "false", None: "null"}[key]
    if isinstance(key, float):
        return repr(key)
    return str(key)


def _unstorable(data: JSON) -> str | None:
    """What jsonb refuses that JSON encoders let through: NaN/Infinity and NUL characters."""
    if isinstance(data, float):
        return None if math.isfinite(data) else f"{data} is not a JSON number"
    if isinstance(data, str):
        return "a string contains a NUL character (\\u0000)" if "\x00" in data else None
    if isinstance(data, list):
        return next((p for p in map(_unstorable, data) if p), None)
    if isinstance(data, dict):
        for key, item in data.items():
            problem = _unstorable(key) or _unstorable(item)
            if problem:
                return problem
    return None


def decode(adapter: pydantic.TypeAdapter[Any], data: JSON, what: str) -> Any:
    try:
        return adapter.validate_python(data)
    except pydantic.ValidationError as exc:
        raise SerializationError(
            f"stored {what} does not fit {_type_name(adapter)}: {_first_error(exc)}"
        ) from None


def _type_name(adapter: pydantic.TypeAdapter[Any]) -> str:
    core = adapter.core_schema
    return str(core.get("cls", core.get("type", "value")))


def _first_error(exc: pydantic.ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"{where + ': ' if where else ''}{first.get('msg', exc)}"


# -- errors ---------------------------------------------------------------------------------


def error_record(exc: BaseException) -> dict[str, JSON]:
    """A JSON record of an exception: type, message, traceback, and its args when they are JSON."""
    cls = type(exc)
    type_name = cls.__qualname__ if cls.__module__ == "builtins" else (
        f"{cls.__module__}.{cls.__qualname__}"
    )
    record: dict[str, JSON] = {
        "type": type_name,
        "message": _storable_text(str(exc)),
        "traceback": _storable_text("".join(traceback.format_exception(exc))),
    }
    if _is_json(exc.args) and _unstorable(list(exc.args)) is None:
        record["args"] = list(exc.args)
    return record


def _storable_text(text: str) -> str:
    return text.replace("\x00", "\\x00")  # jsonb cannot hold NUL


def rebuild_exception(record: dict[str, JSON]) -> BaseException:
    """Recreate a recorded exception so replay raises what the live run raised.

    Falls back to StepFailed when the type cannot be imported or constructed from its args.
    """
    cls = _import_exception_type(str(record.get("type", "")))
    if cls is None:
        return StepFailed(record)
    args = record.get("args", [record.get("message", "")])
    try:
        return cls(*args)
    except Exception:
        # A constructor with other parameters: build the instance without calling __init__,
        # so the workflow still sees the recorded type (and its args / message).
        exc = cls.__new__(cls, *args)
        exc.args = tuple(args)
        return exc


def _import_exception_type(name: str) -> type[BaseException] | None:
    """Find `module.Qual.Name`: the module is the longest importable dotted prefix."""
    parts = name.split(".")
    for split in range(len(parts) - 1, -1, -1):
        module_name, qualname = ".".join(parts[:split]), parts[split:]
        try:
            obj: Any = importlib.import_module(module_name) if module_name else builtins
            for part in qualname:
                obj = getattr(obj, part)
        except (ImportError, AttributeError, ValueError):
            continue
        if isinstance(obj, type) and issubclass(obj, Exception):
            return obj
        return None
    return None


def _is_json(value: Any) -> bool:
    if value is None or isinstance(value, str | int | float | bool):
        return True
    if isinstance(value, list | tuple):
        return all(_is_json(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json(v) for k, v in value.items())
    return False
