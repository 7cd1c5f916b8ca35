"""pgdurable: durable workflows and queues whose state machine lives in PostgreSQL."""

from __future__ import annotations

from pgdurable.app import App
from pgdurable.context import workflow_id
from pgdurable.decorators import RetryPolicy, StepFunction, TransactionFunction, WorkflowFunction
from pgdurable.errors import (
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
    UnknownQueue,
    WorkflowCancelled,
    WorkflowConflict,
    WorkflowFailed,
    WorkflowNotFound,
)
from pgdurable.handle import StepInfo, WorkflowHandle, WorkflowInfo
from pgdurable.queues import Queue, RateLimit
from pgdurable.sleeping import sleep
from pgdurable.worker import Worker

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
    "RegistrationError",
    "RetryPolicy",
    "SchemaError",
    "SerializationError",
    "StepFailed",
    "StepFunction",
    "StepInfo",
    "StepOutcomeUnknown",
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
    "__version__",
    "sleep",
    "workflow_id",
]
