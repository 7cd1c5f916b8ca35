"""What every command shares: the --dsn and --json options, one-line errors, opening the App."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from pgdurable.api.app import App
from pgdurable.core.errors import PgDurableError

F = TypeVar("F", bound=Callable[..., Any])

STATUSES = ("pending", "running", "succeeded", "failed", "cancelled")


def dsn_option(fn: F) -> F:
    return click.option(
        "--dsn",
        envvar="PGDURABLE_DSN",
        show_envvar=True,
        help="PostgreSQL connection string. Default: libpq PG* variables, else the embedded "
        "server under ./.pgdurable.",
    )(fn)


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(fn)


@contextmanager
def friendly_errors(verbose: bool) -> Iterator[None]:
    """Turn expected failures into `error: <one line>` and exit code 1."""
    try:
        yield
    except (click.exceptions.Exit, click.ClickException, click.Abort):
        raise
    except (PgDurableError, OSError, ImportError) as exc:
        if verbose:
            raise
        message = " ".join(str(exc).split())
        raise click.ClickException(message) from None
    except Exception as exc:  # psycopg errors and the like
        if verbose:
            raise
        message = " ".join(str(exc).split())
        raise click.ClickException(f"{type(exc).__name__}: {message}") from None


def verbose() -> bool:
    """Whether -v was given (tracebacks instead of one-line errors)."""
    return bool(click.get_current_context().find_root().obj.get("verbose"))


def open_app(dsn: str | None, app_path: str | None = None) -> App:
    """The App at `app_path` (MODULE:APP) pointed at `dsn`, or a bare App for admin commands."""
    if app_path:
        app = load_app(app_path)
        if dsn:
            app.use_dsn(dsn)
        return app
    return App(dsn)


def load_app(path: str) -> App:
    """Import `module:attribute` (the attribute defaults to `app`) and return the App."""
    module_name, _, attr = path.partition(":")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.ClickException(f"cannot import {module_name!r}: {exc}") from None
    app = getattr(module, attr or "app", None)
    if not isinstance(app, App):
        raise click.ClickException(f"{path!r} is not a pgdurable.App (got {type(app).__name__})")
    return app
