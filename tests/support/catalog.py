"""What pgdurable puts in the catalog of a database, in a comparable form (the migration and
function-file tests compare databases built different ways)."""

from __future__ import annotations

from typing import Any

from .sql import Conn, call


def catalog(conn: Conn, *, skip_tables: tuple[str, ...] = ()) -> dict[str, list[Any]]:
    """Everything pgdurable puts in the catalog, in a comparable form."""
    skip = list(skip_tables)
    queries = {
        "functions": """
            select p.oid::regprocedure::text, pg_get_functiondef(p.oid), p.provolatile
              from pg_proc p where p.pronamespace = 'pgdurable'::regnamespace order by 1""",
        "comments": """
            select p.oid::regprocedure::text, d.description
              from pg_proc p join pg_description d
                on d.objoid = p.oid and d.classoid = 'pg_proc'::regclass and d.objsubid = 0
             where p.pronamespace = 'pgdurable'::regnamespace order by 1""",
        "relations": """
            select c.relname, c.relkind, c.reloptions from pg_class c
             where c.relnamespace = 'pgdurable'::regnamespace
               and not (c.relname = any(%(skip)s))
               and not exists (select from pg_index i join pg_class t on t.oid = i.indrelid
                                where i.indexrelid = c.oid and t.relname = any(%(skip)s))
             order by 1""",
        "columns": """
            select table_name, column_name, ordinal_position, data_type, is_nullable,
                   column_default
              from information_schema.columns
             where table_schema = 'pgdurable' and not (table_name = any(%(skip)s))
             order by 1, 3""",
        "constraints": """
            select conrelid::regclass::text, conname, pg_get_constraintdef(oid)
              from pg_constraint where connamespace = 'pgdurable'::regnamespace
               and not (conrelid::regclass::text = any(
                        select 'pgdurable.' || t from unnest(%(skip)s::text[]) t))
             order by 1, 2""",
        "indexes": """
            select tablename, indexname, indexdef from pg_indexes
             where schemaname = 'pgdurable' and not (tablename = any(%(skip)s)) order by 2""",
        "triggers": """
            select tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) from pg_trigger
             where not tgisinternal
               and tgrelid in (select oid from pg_class
                                where relnamespace = 'pgdurable'::regnamespace)
             order by 1, 2""",
    }
    return {
        key: [tuple(r.values()) for r in call(conn, sql, {"skip": skip})]
        for key, sql in queries.items()
    }
