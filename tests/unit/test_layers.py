"""The package's layers import only downward (docs/explanation/design.md, "Layout").

core -> store -> runtime -> api -> cli, with dev (DSN resolution, the embedded server) beside
store. A module may import its own layer and the layers below it; the package root
(`pgdurable/__init__.py`) and `pgdurable.errors` (the public re-export of core.errors) sit on
top and at the bottom respectively. `if TYPE_CHECKING:` imports count too: they are the real
coupling.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pgdurable

PACKAGE = Path(pgdurable.__file__).parent
BENCH = PACKAGE.parent / "bench" / "pgdurable_bench"

# Rank of each layer: a module may import modules of equal or lower rank.
RANK = {"errors": 0, "core": 0, "store": 1, "dev": 1, "runtime": 2, "api": 3, "testing": 3,
        "cli": 4, "__init__": 4, "pgdurable_bench": 5}
# What each layer may import from outside the standard library and pgdurable.
THIRD_PARTY = {
    "core": {"pydantic", "pydantic_core"},
}
MAX_LINES = 500


def _layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "pgdurable_bench":
        return "pgdurable_bench"
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path, module: str) -> list[str]:
    tree = ast.parse(path.read_text("utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")[: -node.level]
                found.append(".".join([*base, node.module or ""]).rstrip("."))
            elif node.module:
                found.append(node.module)
                found += [f"{node.module}.{a.name}" for a in node.names
                          if node.module == "pgdurable"]
    return found


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        found.append((".".join(parts), path))
    for path in sorted(BENCH.rglob("*.py")):
        rel = path.relative_to(BENCH.parent).with_suffix("")
        found.append((".".join(p for p in rel.parts if p != "__init__"), path))
    return found


def test_every_module_belongs_to_a_layer() -> None:
    assert {_layer(m) for m, _ in _modules()} <= set(RANK)


def test_imports_only_go_down() -> None:
    upward = []
    for module, path in _modules():
        layer = _layer(module)
        for target in _imports(path, module):
            if not target.startswith(("pgdurable.", "pgdurable_bench")) or target in (
                    "pgdurable.__future__",):
                continue
            target_layer = _layer(target)
            if target_layer not in RANK:  # `from pgdurable import X` of a root name
                target_layer = "__init__"
            if module.startswith("pgdurable.") and target_layer == "__init__" \
                    and layer != "__init__":
                upward.append(f"{module} imports the package root ({target})")
            elif RANK[target_layer] > RANK[layer]:
                upward.append(f"{module} ({layer}) imports {target} ({target_layer})")
    assert upward == []


def test_core_needs_no_database_driver() -> None:
    for module, path in _modules():
        layer = _layer(module)
        if layer not in ("core", "errors"):
            continue
        third_party = {t.split(".")[0] for t in _imports(path, module)
                       if not t.startswith("pgdurable")}
        stdlib = {"__future__", "builtins", "collections", "dataclasses", "datetime",
                  "decimal", "functools", "importlib", "inspect", "math", "pathlib", "re",
                  "sys", "traceback", "typing", "zoneinfo"}
        assert third_party - stdlib <= THIRD_PARTY["core"], module


def test_modules_stay_small() -> None:
    big = {module: n for module, path in _modules()
           if (n := len(path.read_text("utf-8").splitlines())) > MAX_LINES}
    assert big == {}
