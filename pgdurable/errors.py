"""pgdurable's exceptions, under their public module name (defined in pgdurable/core/errors.py).

Stored error records name pgdurable's exceptions `pgdurable.errors.<Name>`; this module is
where a replay finds them again.
"""

from __future__ import annotations

from pgdurable.core.errors import (
    SQLSTATE_TO_EXCEPTION,
    ConfigurationError,
    DatabaseUnavailable,
    FencedError,
    InvalidArgument,
    InvalidState,
    NonDeterminismError,
    PgDurableError,
    RegistrationError,
    SchemaError,
    SerializationError,
    StepFailed,
    StepOutcomeUnknown,
    StepTimeout,
    UnknownQueue,
    WorkflowCancelled,
    WorkflowConflict,
    WorkflowFailed,
    WorkflowNotFound,
    WorkflowTimeout,
    from_sqlstate,
)

__all__ = [
    "SQLSTATE_TO_EXCEPTION",
    "ConfigurationError",
    "DatabaseUnavailable",
    "FencedError",
    "InvalidArgument",
    "InvalidState",
    "NonDeterminismError",
    "PgDurableError",
    "RegistrationError",
    "SchemaError",
    "SerializationError",
    "StepFailed",
    "StepOutcomeUnknown",
    "StepTimeout",
    "UnknownQueue",
    "WorkflowCancelled",
    "WorkflowConflict",
    "WorkflowFailed",
    "WorkflowNotFound",
    "WorkflowTimeout",
    "from_sqlstate",
]
