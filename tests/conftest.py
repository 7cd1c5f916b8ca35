"""Test databases come from pgdurable.testing, the plugin users get: one migrated template per
session, a fresh clone of it per test, on the embedded PostgreSQL (data under
.pgdurable/test/pg) unless PGDURABLE_TEST_DSN names another server. The fixtures the suite
shares are in tests/support/fixtures.py."""

from __future__ import annotations

pytest_plugins = ("pytester", "pgdurable.testing", "tests.support.fixtures")
