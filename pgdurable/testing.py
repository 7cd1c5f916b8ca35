"""pgdurable's pytest plugin and test helpers: `pytest_plugins = ["pgdurable.testing"]`.

See pgdurable/api/testing.py and docs/how-to/test-your-workflows.md.
"""

from __future__ import annotations

import sys

from pgdurable.api.testing import (
    TEST_DSN_ENV,
    Clock,
    CrashNotReached,
    SimulatedCrash,
    TemplateSetup,
    crash_at_step,
    create_database,
    create_template,
    database_dsn,
    drop_database,
    server_dsn,
    unique_name,
)

__all__ = [
    "TEST_DSN_ENV",
    "Clock",
    "CrashNotReached",
    "SimulatedCrash",
    "TemplateSetup",
    "crash_at_step",
    "create_database",
    "create_template",
    "database_dsn",
    "drop_database",
    "server_dsn",
    "unique_name",
]

if "pytest" in sys.modules:  # loaded as a pytest plugin: the fixtures are module attributes
    from pgdurable.api.testing import (  # noqa: F401
        _pgdurable_apps,
        pgdurable_app,
        pgdurable_bind,
        pgdurable_clock,
        pgdurable_dsn,
        pgdurable_server_dsn,
        pgdurable_template,
        pgdurable_template_setup,
    )
