"""Generate the functions part of docs/reference/sql.md from the SQL function files.

    python tools/sql_reference.py [--dsn DSN] [--check]

One section per file of sql/functions/ (its title and introduction are the file's leading
comment block), one entry per `comment on function` in the file, in file order: the signature
as the catalog prints it and the comment's text. The database (default: PGDURABLE_DSN, else the
embedded server) must be migrated by this checkout: its function files must be current. The
rest of sql.md is written by hand; only the part between the two markers below is replaced.
`--check` exits with status 1 when the file is not current, instead of writing it.
tests/sql/test_sql_reference.py fails when the committed file is not current.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from pgdurable.dev.config import resolve_dsn
from pgdurable.store import migrate
from pgdurable.store.migrate import FunctionFile

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "reference" / "sql.md"
BEGIN = ("<!-- BEGIN functions: generated from the comments in sql/functions/ by "
         "tools/sql_reference.py; edit those, then run it -->")
END = "<!-- END functions -->"
# Reading order of the sections; a file not listed comes after these, by name.
SECTION_ORDER = ("core", "runs", "steps", "sleep", "queues", "forks", "recovery", "schedules")
WIDTH = 96

_COMMENT_ON = re.compile(r"^comment on function (pgdurable\.\w+\([^)]*\)) is", re.MULTILINE)
_ENTRY = """
    select p.oid::regprocedure::text as signature, p.proname as name,
           pg_get_function_arguments(p.oid) as arguments,
           pg_get_function_result(p.oid) as result,
           obj_description(p.oid, 'pg_proc') as comment
      from pg_proc p where p.oid = %s::regprocedure"""
_ALL = "select p.oid::regprocedure::text as signature from pg_proc p " \
       "where p.pronamespace = 'pgdurable'::regnamespace"


def ordered(files: tuple[FunctionFile, ...]) -> list[FunctionFile]:
    rank = {name: i for i, name in enumerate(SECTION_ORDER)}
    return sorted(files, key=lambda f: (rank.get(f.name, len(rank)), f.name))


def header(f: FunctionFile) -> tuple[str, str]:
    """The section title (the file's first line) and introduction (the rest of its leading
    comment block)."""
    lines = []
    for line in f.sql.splitlines():
        if not line.startswith("--"):
            break
        lines.append(line[3:] if line.startswith("-- ") else line[2:])
    if not lines or not lines[0].strip():
        raise ValueError(f"{f.filename} must start with a `-- <section title>` line")
    return lines[0].strip(), "\n".join(lines[1:]).strip()


def documented(f: FunctionFile) -> list[str]:
    """The functions that `f` comments on, in file order (as written there)."""
    return [" ".join(m.split()) for m in _COMMENT_ON.findall(f.sql)]


def split_top(text: str) -> list[str]:
    """Split at the commas outside parentheses and quotes."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(text):
        if ch == "'":
            quoted = not quoted
        elif not quoted and ch in "([":
            depth += 1
        elif not quoted and ch in ")]":
            depth -= 1
        elif not quoted and depth == 0 and ch == ",":
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def wrap(head: str, items: list[str], indent: int) -> list[str]:
    """`head(item, item, ...)` filled to WIDTH, continuation lines indented by `indent`."""
    lines, line = [], head + "("
    for i, item in enumerate(items):
        piece = item + ("," if i < len(items) - 1 else "")
        sep = "" if line.endswith("(") else " "
        if len(line) + len(sep) + len(piece) + 1 > WIDTH and not line.endswith("("):
            lines.append(line)
            line, sep = " " * indent, ""
        line += sep + piece
    lines.append(line + ")")
    return lines


def signature(row: dict[str, Any]) -> str:
    name = f"pgdurable.{row['name']}"
    lines = wrap(name, split_top(row["arguments"]), len(name) + 1)
    result = row["result"]
    match = re.fullmatch(r"TABLE\((.*)\)", result, re.DOTALL)
    if match:
        lines += wrap("  returns TABLE", split_top(match[1]), len("  returns TABLE("))
    else:
        lines.append(f"  returns {result}")
    return "\n".join(lines)


def entry(row: dict[str, Any]) -> str:
    comment = (row["comment"] or "").strip()
    if not comment:
        raise ValueError(f"{row['signature']} has no comment")
    internal = " (internal)" if comment.startswith("Internal") else ""
    return (f"#### `pgdurable.{row['name']}`{internal}\n\n```sql\n{signature(row)}\n```\n\n"
            f"{comment}\n")


def render(conn: psycopg.Connection[Any]) -> str:
    """The generated part of sql.md, from a database whose function files are current."""
    migrate.check_schema(conn)
    seen: set[str] = set()
    sections = []
    with conn.cursor(row_factory=dict_row) as cur:
        for f in ordered(migrate.function_files()):
            title, intro = header(f)
            parts = [f"### {title}\n\n{intro}\n\nSource: `sql/{f.filename}`.\n"]
            for text in documented(f):
                row = cur.execute(_ENTRY, (text,)).fetchone()
                assert row is not None
                if row["signature"] in seen:
                    raise ValueError(f"{row['signature']} is commented on twice")
                seen.add(row["signature"])
                parts.append(entry(row))
            sections.append("\n".join(parts))
        every = {r["signature"] for r in cur.execute(_ALL).fetchall()}
    if every - seen:
        raise ValueError(f"functions without a comment in sql/functions: {sorted(every - seen)}")
    return "\n".join(sections)


def splice(doc: str, generated: str) -> str:
    """`doc` with the part between the markers replaced by `generated`."""
    before, found, rest = doc.partition(BEGIN + "\n")
    _, found_end, after = rest.partition(END)
    if not found or not found_end:
        raise ValueError(f"{DOC.name} lacks the markers {BEGIN!r} ... {END!r}")
    return f"{before}{BEGIN}\n\n{generated.strip()}\n\n{END}{after}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", help="a database migrated by this checkout")
    parser.add_argument("--check", action="store_true", help="fail if sql.md is not current")
    args = parser.parse_args(argv)
    with psycopg.connect(resolve_dsn(args.dsn), autocommit=True) as conn:
        generated = render(conn)
    doc = DOC.read_text("utf-8")
    updated = splice(doc, generated)
    if args.check:
        if updated != doc:
            print(f"{DOC.relative_to(ROOT)} is not current: run python tools/sql_reference.py",
                  file=sys.stderr)
            return 1
        return 0
    if updated != doc:
        DOC.write_text(updated, "utf-8")
        print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
