"""Every repository path the docs name (`sql/migrations/`, `pgdurable/core/cron.py`,
`tests/faults/test_kill.py::test_...`, ...) exists, so that a move of a file shows up here
instead of in a reader's failed search.

A path is recognised by its first directory: one of the repository's top-level folders. A pattern
with `*` must match at least one file.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.docs import markdown

_TOP = ("pgdurable", "sql", "bench", "tests", "examples", "docs", ".ci")
_PATH = re.compile(r"(?<![\w./-])((?:" + "|".join(map(re.escape, _TOP)) + r")/[\w./*-]*)")

# Pages that name stale paths and that this change may not edit (another change owns them).
# Strict: once a page is fixed, its expected failure stops failing, and this test fails until
# the entry is removed.
NOT_YET_UPDATED: dict[str, str] = {}


def missing_paths(text: str, root: Path) -> list[str]:
    missing = []
    for found in sorted(set(_PATH.findall(text))):
        path = found.split("::")[0].rstrip(".,:;")
        exists = any(root.glob(path)) if "*" in path else (root / path).exists()
        if not exists:
            missing.append(path)
    return missing


@pytest.mark.parametrize(
    "page",
    [
        pytest.param(
            page, marks=pytest.mark.xfail(reason=NOT_YET_UPDATED[markdown.rel(page)], strict=True)
        )
        if markdown.rel(page) in NOT_YET_UPDATED
        else page
        for page in markdown.doc_files()
    ],
    ids=markdown.rel,
)
def test_named_paths_exist(page: Path) -> None:
    assert missing_paths(page.read_text("utf-8"), markdown.ROOT) == []


def test_the_path_check_sees_moved_files(tmp_path: Path) -> None:
    (tmp_path / "pgdurable" / "core").mkdir(parents=True)
    (tmp_path / "pgdurable" / "core" / "cron.py").touch()
    (tmp_path / "sql" / "migrations").mkdir(parents=True)
    (tmp_path / "sql" / "migrations" / "0001_initial.sql").touch()
    text = (
        "Parsed in `pgdurable/core/cron.py`, once in `pgdurable/cron.py`; the files "
        "`sql/migrations/NNNN_*.sql` and `sql/migrations/*.sql`, the test "
        "`tests/unit/test_cron.py::test_steps`. Not paths: `.pgdurable/pg`, "
        "`/srv/app/.venv/bin/pgdurable`, https://example.com/pgdurable/x."
    )
    assert missing_paths(text, tmp_path) == [
        "pgdurable/cron.py",
        "sql/migrations/NNNN_*.sql",
        "tests/unit/test_cron.py",
    ]
