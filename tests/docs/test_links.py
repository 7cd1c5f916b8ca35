"""Every relative link in README.md, bench/README.md and docs/ points at a file that exists, and
every `#anchor` at a heading (or an HTML id) of the page it names.

Links to other sites (http, https, mailto) are not followed. An anchor into a file that is not
Markdown is not checked.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.docs import markdown

_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def broken_links(page: Path) -> list[str]:
    text = page.read_text("utf-8")
    problems = []
    for line, target in markdown.links(text):
        if not target or _SCHEME.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / unquote(path_part)).resolve() if path_part else page
        where = f"{page.name}:{line}: {target}"
        if not dest.exists():
            problems.append(f"{where}: no such file")
        elif anchor and dest.suffix == ".md" and dest.is_file():
            if unquote(anchor) not in markdown.anchors(dest.read_text("utf-8")):
                problems.append(f"{where}: no heading with anchor #{anchor} in {dest.name}")
    return problems


@pytest.mark.parametrize("page", markdown.doc_files(), ids=markdown.rel)
def test_relative_links_resolve(page: Path) -> None:
    assert broken_links(page) == []


def test_the_link_check_sees_broken_files_and_anchors(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n\n## Run `pgdurable worker --recover`\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[ok](other.md) [ok](other.md#run-pgdurable-worker---recover) [ok](#page)\n"
        "[gone](missing.md) [bad anchor](other.md#nope) [wrapped\nlink](#nowhere)\n"
        "[web](https://example.com/x.md) `[code](missing.md)`\n\n"
        "```\n[in a block](missing.md)\n```\n"
    )
    assert broken_links(page) == [
        "page.md:4: missing.md: no such file",
        "page.md:4: other.md#nope: no heading with anchor #nope in other.md",
        "page.md:4: #nowhere: no heading with anchor #nowhere in page.md",
    ]


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Many runs at once: `enqueue_many`", "many-runs-at-once-enqueue_many"),
        ("`pgdurable queues [list]`", "pgdurable-queues-list"),
        ("Wake-ups: NOTIFY coalescing", "wake-ups-notify-coalescing"),
        ("The `tasks.py` example", "the-taskspy-example"),
    ],
)
def test_slugs_follow_github(heading: str, anchor: str) -> None:
    assert markdown.slug(heading) == anchor


def test_a_repeated_heading_gets_a_numbered_anchor() -> None:
    assert markdown.anchors("# A\n## Options\n## Options\n") == {"a", "options", "options-1"}
