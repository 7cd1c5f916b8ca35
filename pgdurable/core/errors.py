"""The exception tree, and the map from pgdurable's SQLSTATEs (PD...) to its classes.

Users import these from `pgdurable` or `pgdurable.errors`; the store turns database errors into
them (store/database.py, `translate`)."""

from __future__ import annotations

from typing import Any


class PgDurableError(Exception):
    """Base class of every error pgdurable raises."""


class ConfigurationError(PgDurableError):
    """The library is misconfigured: bad DSN, unreachable server, invalid option."""


class DatabaseUnavailable(ConfigurationError):
    """PostgreSQL could not be reached for longer than the retry budget. An execution that hits
    it stops without recording anything: its lease expires and the run is taken over."""


class SchemaError(PgDurableError):
    """The database schema is missing, too old, too new, or its migrations were edited."""


class RegistrationError(PgDurableError):
    """A function was registered twice, or a workflow name is unknown."""


class SerializationError(PgDurableError, TypeError):
    """A value cannot be encoded to (or decoded from) JSON for its annotated type."""


class FencedError(PgDurableError):
    """This execution's epoch is stale: another worker took the run over (SQLSTATE PD001)."""


class WorkflowConflict(PgDurableError):
    """The workflow id already belongs to a different workflow function (SQLSTATE PD002)."""


class NonDeterminismError(PgDurableError):
    """Replay called a different step at a recorded position (SQLSTATE PD003)."""


class WorkflowNotFound(PgDurableError, LookupError):
    """No workflow with that id (SQLSTATE PD004), or its starting transaction rolled back."""


class InvalidState(PgDurableError):
    """The requested transition is not allowed from the run's current status (SQLSTATE PD005)."""


class InvalidArgument(PgDurableError, ValueError):
    """An argument is out of range (SQLSTATE PD006)."""


class UnknownQueue(PgDurableError, LookupError):
    """No queue with that name exists in the database (SQLSTATE PD007)."""


class StepOutcomeUnknown(PgDurableError):
    """An at-most-once step began in an earlier execution that crashed before it finished.

    Its body may or may not have taken effect; it is not run again.
    """


class WorkflowCancelled(PgDurableError):
    """The run was cancelled (by an operator, with an ancestor, or by its timeout)."""


class WorkflowTimeout(WorkflowCancelled):
    """The run passed its `timeout` (a deadline for the whole run, waits included) and the
    recovery sweep cancelled it, or it was cancelled with an ancestor that timed out. `error` is
    the run's stored error record (`{"type": "WorkflowTimeout", "message": ..., "timeout_at":
    ...}`, plus `ancestor` for a descendant)."""

    def __init__(self, workflow_id: str, error: dict[str, Any]) -> None:
        self.workflow_id = workflow_id
        self.error = error
        super().__init__(f"workflow {workflow_id!r} timed out: {error.get('message', '')}")


class StepTimeout(PgDurableError):
    """A step body ran longer than its `@app.step(timeout=...)`: that attempt failed (and is
    retried like any failure). The abandoned body keeps running to its end in its helper thread;
    its result is discarded."""


class WorkflowFailed(PgDurableError):
    """The run ended in failure. Carries the original error's type, message and traceback."""

    def __init__(self, workflow_id: str, error: dict[str, Any]) -> None:
        self.workflow_id = workflow_id
        self.error = error
        self.type_name: str = str(error.get("type", "Exception"))
        self.message: str = str(error.get("message", ""))
        self.traceback: str = str(error.get("traceback", ""))
        super().__init__(f"workflow {workflow_id!r} failed: {self.type_name}: {self.message}")


class StepFailed(PgDurableError):
    """Replay of a recorded step failure whose original exception type cannot be rebuilt."""

    def __init__(self, error: dict[str, Any]) -> None:
        self.error = error
        self.type_name: str = str(error.get("type", "Exception"))
        self.message: str = str(error.get("message", ""))
        super().__init__(f"{self.type_name}: {self.message}")


SQLSTATE_TO_EXCEPTION: dict[str, type[PgDurableError]] = {
    "PD001": FencedError,
    "PD002": WorkflowConflict,
    "PD003": NonDeterminismError,
    "PD004": WorkflowNotFound,
    "PD005": InvalidState,
    "PD006": InvalidArgument,
    "PD007": UnknownQueue,
}


def from_sqlstate(sqlstate: str, message: str) -> PgDurableError:
    """The exception for an error reported as data (SQLSTATE and message), not raised."""
    cls = SQLSTATE_TO_EXCEPTION.get(sqlstate, PgDurableError)
    return cls(message if cls is not PgDurableError else f"{message} (SQLSTATE {sqlstate})")


# Error records store an exception's module and name (serde.error_record), and replays rebuild
# it from them: the public module is the stable name, wherever the classes are defined.
for _cls in [*SQLSTATE_TO_EXCEPTION.values(), PgDurableError, ConfigurationError,
             DatabaseUnavailable, SchemaError, RegistrationError, SerializationError,
             StepOutcomeUnknown, WorkflowCancelled, WorkflowTimeout, WorkflowFailed, StepFailed,
             StepTimeout]:
    _cls.__module__ = "pgdurable.errors"
