"""pgdurable: durable workflows and queues whose state machine lives in PostgreSQL."""

from __future__ import annotations

from pgdurable.api.app import App
from pgdurable.api.children import gather, wait_first
from pgdurable.api.decorators import (
    RetryPolicy,
    StepFunction,
    TransactionFunction,
    WorkflowFunction,
)
from pgdurable.api.handles import StepInfo, WorkflowHandle, WorkflowInfo
from pgdurable.api.queues import Queue, RateLimit
from pgdurable.api.worker import Worker
from pgdurable.core.errors import (
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
)
from pgdurable.runtime.context import workflow_id
from pgdurable.runtime.recovery import RecoveryDaemon, RecoverySettings
from pgdurable.runtime.sleeping import sleep

__version__ = "0.1.0"

__all__ = [
    "App",
    "ConfigurationError",
    "DatabaseUnavailable",
    "FencedError",
    "InvalidArgument",
    "InvalidState",
    "NonDeterminismError",
    "PgDurableError",
    "Queue",
    "RateLimit",
    "RecoveryDaemon",
    "RecoverySettings",
    "RegistrationError",
    "RetryPolicy",
    "SchemaError",
    "SerializationError",
    "StepFailed",
    "StepFunction",
    "StepInfo",
    "StepOutcomeUnknown",
    "StepTimeout",
    "TransactionFunction",
    "UnknownQueue",
    "Worker",
    "WorkflowCancelled",
    "WorkflowConflict",
    "WorkflowFailed",
    "WorkflowFunction",
    "WorkflowHandle",
    "WorkflowInfo",
    "WorkflowNotFound",
    "WorkflowTimeout",
    "__version__",
    "gather",
    "sleep",
    "wait_first",
    "workflow_id",
]
