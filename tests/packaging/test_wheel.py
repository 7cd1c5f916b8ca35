"""The wheel: built from this tree, installed into a fresh virtualenv, and run from there against
a fresh database of the test server. It must carry its SQL (migrations, function files,
queries, the bench's SQL) and read it from site-packages, not from this source tree.

About 15 s: the build fetches hatchling and the install resolves the dependencies from the
configured package index (its cache makes later runs faster). Deselect with -m "not packaging".
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from pgdurable.store import migrate

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.packaging, pytest.mark.timeout(300)]


def run(*args: str | Path, cwd: Path, timeout: float = 240) -> str:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PGDURABLE_DSN")}
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"{args}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", out, ROOT,
        cwd=out)
    [built] = out.glob("pgdurable-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ folder of a fresh virtualenv with the wheel installed."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    run(bin_dir / "python", "-m", "pip", "install", "--quiet", wheel, cwd=env_dir)
    return bin_dir


def test_the_wheel_ships_the_sql_files(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    expected = {f"pgdurable/sql/migrations/{m.filename}" for m in migrate.available()}
    expected |= {f"pgdurable/sql/{f.filename}" for f in migrate.function_files()}
    expected |= {"pgdurable/sql/queries.sql", "pgdurable_bench/bench.sql", "pgdurable/py.typed"}
    assert expected <= names
    assert not [n for n in names if n.startswith(("sql/", "bench/", "tests/"))]


def test_the_installed_package_reads_its_sql_from_site_packages(
    installed: Path, tmp_path: Path
) -> None:
    out = run(installed / "python", "-c",
              "import pgdurable.store.sql as s, pgdurable.store.migrate as m; "
              "print(s.sql_dir()); print(s.__file__); "
              "print(' '.join(f.filename for f in m.function_files()))", cwd=tmp_path)
    sql_dir, module, functions = out.splitlines()
    site_packages = Path(module).resolve().parents[2]
    assert site_packages.name == "site-packages"
    assert Path(sql_dir).resolve() == site_packages / "pgdurable" / "sql"
    assert not Path(sql_dir).resolve().is_relative_to(ROOT)
    assert functions.split() == [f.filename for f in migrate.function_files()]


def test_the_installed_cli_migrates_a_database(
    installed: Path, empty_dsn: str, tmp_path: Path
) -> None:
    first = run(installed / "pgdurable", "migrate", "--dsn", empty_dsn, cwd=tmp_path)
    applied = [f"applied {m.filename}" for m in migrate.available()]
    applied += [f"applied {f.filename}" for f in migrate.function_files()]
    assert first.splitlines() == applied
    again = run(installed / "pgdurable", "migrate", "--dsn", empty_dsn, cwd=tmp_path)
    assert again.strip() == f"schema is up to date (version {migrate.latest_version()})"


def test_the_installed_cli_and_bench_start(installed: Path, tmp_path: Path) -> None:
    assert "migrate" in run(installed / "pgdurable", "--help", cwd=tmp_path)
    assert "Usage:" in run(installed / "pgdurable", "bench", "--help", cwd=tmp_path)
