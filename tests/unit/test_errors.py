"""The exception tree and the SQLSTATE map."""

from __future__ import annotations

import pytest

from pgdurable import errors


def test_the_sqlstate_map_covers_the_documented_codes() -> None:
    documented = {
        "PD001": errors.FencedError,
        "PD002": errors.WorkflowConflict,
        "PD003": errors.NonDeterminismError,
        "PD004": errors.WorkflowNotFound,
        "PD005": errors.InvalidState,
        "PD006": errors.InvalidArgument,
    }
    for code, cls in documented.items():
        assert errors.SQLSTATE_TO_EXCEPTION[code] is cls
    for code, cls in errors.SQLSTATE_TO_EXCEPTION.items():
        assert len(code) == 5 and code.startswith("PD")
        assert issubclass(cls, errors.PgDurableError)


@pytest.mark.parametrize(
    ("cls", "also"),
    [
        (errors.SerializationError, TypeError),
        (errors.WorkflowNotFound, LookupError),
        (errors.InvalidArgument, ValueError),
    ],
)
def test_errors_are_also_the_matching_builtin(cls: type[Exception], also: type[Exception]
                                               ) -> None:
    assert issubclass(cls, errors.PgDurableError)
    assert issubclass(cls, also)


def test_every_public_error_derives_from_the_base() -> None:
    public = [obj for name, obj in vars(errors).items()
              if isinstance(obj, type) and issubclass(obj, Exception)
              and obj.__module__ == errors.__name__]
    assert len(public) >= 10
    for cls in public:
        assert issubclass(cls, errors.PgDurableError), cls


def test_workflow_failed_carries_the_record() -> None:
    record = {"type": "ValueError", "message": "bad", "traceback": "Traceback ...\n"}
    exc = errors.WorkflowFailed("order-1", record)
    assert (exc.workflow_id, exc.type_name, exc.message, exc.traceback) == (
        "order-1", "ValueError", "bad", "Traceback ...\n")
    assert exc.error is record
    assert str(exc) == "workflow 'order-1' failed: ValueError: bad"


def test_workflow_failed_with_an_empty_record() -> None:
    exc = errors.WorkflowFailed("w", {})
    assert (exc.type_name, exc.message, exc.traceback) == ("Exception", "", "")


def test_step_failed_carries_the_record() -> None:
    exc = errors.StepFailed({"type": "mod.Err", "message": "m"})
    assert (exc.type_name, exc.message) == ("mod.Err", "m")
    assert str(exc) == "mod.Err: m"
