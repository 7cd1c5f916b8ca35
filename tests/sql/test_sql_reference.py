"""The comments on the SQL functions, and docs/reference/sql.md generated from them."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

from pgdurable.store import migrate
from tests.support.sql import Conn, call

ROOT = Path(__file__).resolve().parents[2]
SQL_MD = ROOT / "docs" / "reference" / "sql.md"


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sql_reference",
                                                  ROOT / "tools" / "sql_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = _tool()

COMMENTS = """
    select p.oid::regprocedure::text as signature, p.proname as name, p.prosrc as body,
           obj_description(p.oid, 'pg_proc') as comment,
           array(select a.n from unnest(p.proargnames, p.proargmodes) a(n, m)
                  where coalesce(a.m, 'i') in ('i', 'b')) as parameters
      from pg_proc p where p.pronamespace = 'pgdurable'::regnamespace order by 1"""


def test_the_sql_reference_is_current(conn: Conn) -> None:
    doc = SQL_MD.read_text("utf-8")
    assert tool.splice(doc, tool.render(conn)) == doc, (
        "docs/reference/sql.md is not current: run `python tools/sql_reference.py`")


def test_the_sql_reference_documents_each_function_with_its_comment(conn: Conn) -> None:
    doc = SQL_MD.read_text("utf-8")
    generated = doc[doc.index(tool.BEGIN):doc.index(tool.END)]
    rows = call(conn, COMMENTS)
    for row in rows:
        assert f"#### `pgdurable.{row['name']}`" in generated, row["signature"]
        assert row["comment"].strip() in generated, row["signature"]
    headings = re.findall(r"^#### `pgdurable\.(\w+)`", generated, re.MULTILINE)
    assert sorted(headings) == sorted(r["name"] for r in rows)  # none missing from the catalog


def test_each_comment_names_the_function_parameters(conn: Conn) -> None:
    missing = {r["signature"]: [p for p in r["parameters"]
                                if not re.search(rf"\b{p}\b", r["comment"] or "")]
               for r in call(conn, COMMENTS)}
    assert {s: ps for s, ps in missing.items() if ps} == {}


def test_each_comment_names_the_errors_its_function_raises(conn: Conn) -> None:
    """Every PD code written in a function's body is named in its comment (codes raised by the
    functions it calls are listed by hand)."""
    missing = {r["signature"]: sorted(set(re.findall(r"'(PD\d{3})'", r["body"]))
                                      - set(re.findall(r"PD\d{3}", r["comment"] or "")))
               for r in call(conn, COMMENTS)}
    assert {s: codes for s, codes in missing.items() if codes} == {}


def test_every_section_has_a_title_and_an_introduction() -> None:
    for f in migrate.function_files():
        title, intro = tool.header(f)
        assert title and not title.endswith("."), f.filename
        assert intro, f.filename
        assert tool.documented(f), f"{f.filename} comments on no function"


def test_comments_read_as_plain_paragraphs_in_markdown(conn: Conn) -> None:
    """A wrapped line that starts like a list item, quote or heading would change the page."""
    block = re.compile(r"^([-+*>#] |\d+[.)] |[=-]+$)")
    bad = [(r["signature"], line) for r in call(conn, COMMENTS)
           for line in (r["comment"] or "").splitlines() if block.match(line)]
    assert bad == []
