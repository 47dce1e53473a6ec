"""The package's layout rules (issue 13), checked on the source without running it.

- The import contracts in pyproject.toml's [tool.importlinter]: the layers (entry points >
  GraphQL | HTTP > services > domain > infra > base), no web or GraphQL framework under the
  domain, no test or bench code in the service.
- No two classes in the package share a name (a schema's `Subscription` and a table's
  `Subscription` read alike in a traceback, a log line or a grep).
- No module takes a private name from Strawberry or graphql-core, except
  gemini_graphql/api/transport/strawberry_seams.py, where every such name is kept (and where an
  upgrade that moves one fails its own test).

Pure: no database, no Redis, nothing imported from the package.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gemini_graphql"
SEAMS = PACKAGE / "api" / "transport" / "strawberry_seams.py"
PRIVATE_SOURCES = ("strawberry", "graphql")  # import names: strawberry-graphql, graphql-core
GETATTR_FAMILY = frozenset({"getattr", "hasattr", "setattr", "delattr"})

LINT = (
    "import sys\n"
    "from importlinter.cli import lint_imports_command\n"
    "lint_imports_command(sys.argv[1:], prog_name='lint-imports')\n"
)


@functools.cache
def package_modules() -> tuple[tuple[Path, ast.Module], ...]:
    """Every module of gemini_graphql, parsed."""
    return tuple(
        (path, ast.parse(path.read_bytes(), filename=str(path)))
        for path in sorted(PACKAGE.rglob("*.py"))
    )


def where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"


def is_private(name: str) -> bool:
    """`_name`, not `__dunder__`."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


# --- the import contracts -------------------------------------------------------------------


def test_import_contracts_hold() -> None:
    # In a child process: import-linter's command reconfigures logging and sys.path.
    run = subprocess.run(
        [sys.executable, "-c", LINT, "pyproject.toml", "--no-cache", "--no-logo"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, f"lint-imports failed:\n{output}"
    assert re.search(r"Contracts: \d+ kept, 0 broken\.", output), output


# --- class names ----------------------------------------------------------------------------


def test_class_names_are_unique() -> None:
    defined: defaultdict[str, list[str]] = defaultdict(list)
    for path, tree in package_modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                defined[node.name].append(where(path, node))
    clashes = {name: places for name, places in sorted(defined.items()) if len(places) > 1}
    assert not clashes, "classes that share a name:\n" + "\n".join(
        f"  {name}: {', '.join(places)}" for name, places in clashes.items()
    )


# --- private names of Strawberry and graphql-core -------------------------------------------


@functools.cache
def library_sources() -> tuple[tuple[str, str], ...]:
    """(path inside site-packages, text) of every module of Strawberry and graphql-core."""
    sources = []
    for name in PRIVATE_SOURCES:
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.submodule_search_locations, name
        for location in spec.submodule_search_locations:
            base = Path(location)
            for path in sorted(base.rglob("*.py")):
                relative = f"{name}/{path.relative_to(base)}"
                sources.append((relative, path.read_text("utf-8", errors="replace")))
    return tuple(sources)


def library_defining(name: str) -> str | None:
    """The first Strawberry or graphql-core module whose source has the identifier `name`."""
    identifier = re.compile(rf"(?<!\w){re.escape(name)}(?!\w)")
    for relative, text in library_sources():
        if name in text and identifier.search(text):
            return relative
    return None


def is_self(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id in {"self", "cls"}


def private_imports(path: Path, tree: ast.Module) -> list[str]:
    """`from strawberry._x import y`, `from graphql.x import _y`, `import strawberry._x`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            parts = node.module.split(".")
            if parts[0] not in PRIVATE_SOURCES:
                continue
            names = [alias.name for alias in node.names]
            if any(is_private(part) for part in parts) or any(map(is_private, names)):
                found.append(f"{where(path, node)}: from {node.module} import {', '.join(names)}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] in PRIVATE_SOURCES and any(is_private(part) for part in parts):
                    found.append(f"{where(path, node)}: import {alias.name}")
    return found


def private_attributes(path: Path, tree: ast.Module) -> list[tuple[str, str, str]]:
    """(place, code, name) of each `obj._name` (obj not self or cls) and each
    getattr/hasattr/setattr/delattr(obj, "_name"): whose `_name` it is, the source can't say
    without types, so test_no_private_strawberry_or_graphql_names keeps those that Strawberry
    or graphql-core has."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr) and not is_self(node.value):
            found.append((where(path, node), ast.unparse(node), node.attr))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in GETATTR_FAMILY
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and is_private(node.args[1].value)
        ):
            found.append((where(path, node), ast.unparse(node), node.args[1].value))
    return found


def test_no_private_strawberry_or_graphql_names() -> None:
    found: list[str] = []
    for path, tree in package_modules():
        if path == SEAMS:
            continue
        found += private_imports(path, tree)
        for place, code, name in private_attributes(path, tree):
            library_module = library_defining(name)
            if library_module is not None:
                found.append(f"{place}: {code}  ({name} is in {library_module})")
    assert not found, (
        "private Strawberry or graphql-core names outside "
        f"{SEAMS.relative_to(ROOT)} (take them through it):\n"
        + "\n".join(f"  {line}" for line in sorted(found))
    )
