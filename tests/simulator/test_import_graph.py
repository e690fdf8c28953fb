"""The simulator, the proxy and their shared wire layer form a graph without circles.

Read from the source (every ``import``, those under ``TYPE_CHECKING`` too),
not from what happens to be loaded.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

import ibkr_connection

SRC = Path(ibkr_connection.__file__).parent
PACKAGES = ("simulator", "proxy", "wire")


def _module(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every ibkr_connection module a file imports, as a dotted name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("ibkr_connection"))
        elif (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
              and node.module.startswith("ibkr_connection")):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if (SRC.parent / (sub.replace(".", "/") + ".py")).exists()
                          else node.module)
    return found


GRAPH = {_module(path): _imports(path) for path in sorted(SRC.rglob("*.py"))}


@pytest.mark.parametrize(("importer", "forbidden"), [
    ("ibkr_connection.proxy", "ibkr_connection.simulator"),
    ("ibkr_connection.simulator", "ibkr_connection.proxy"),
    ("ibkr_connection.wire", "ibkr_connection.simulator"),
    ("ibkr_connection.wire", "ibkr_connection.proxy"),
    ("ibkr_connection.machine", "ibkr_connection.simulator"),
    ("ibkr_connection.machine", "ibkr_connection.proxy"),
    ("ibkr_connection.machine", "ibkr_connection.wire"),
    ("ibkr_connection.driver", "ibkr_connection.simulator"),
    ("ibkr_connection.driver", "ibkr_connection.proxy"),
    ("ibkr_connection.driver", "ibkr_connection.wire"),
    ("ibkr_connection.manager", "ibkr_connection.simulator"),
    ("ibkr_connection.manager", "ibkr_connection.proxy"),
    ("ibkr_connection.manager", "ibkr_connection.wire"),
])
def test_a_layer_does_not_import_what_it_must_not(importer: str, forbidden: str) -> None:
    """The proxy and the simulator share the wire layer and never import each other."""
    offenders = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if module == importer or module.startswith(importer + ".")
        for target in targets
        if target == forbidden or target.startswith(forbidden + ".")
    )
    assert offenders == []


def test_no_circle_in_the_simulator_the_proxy_or_the_wire_layer() -> None:
    """No module of the three packages reaches itself through its imports."""
    inside = {m for m in GRAPH if m.split(".")[1:2] and m.split(".")[1] in PACKAGES}

    def reach(start: str) -> set[str]:
        seen: set[str] = set()
        todo = [t for t in GRAPH[start] if t in inside and t != _package(start)]
        while todo:
            module = todo.pop()
            if module in seen:
                continue
            seen.add(module)
            todo.extend(t for t in GRAPH.get(module, ()) if t in inside
                        and t != _package(module))
        return seen

    circles = sorted(m for m in inside if not m.endswith(PACKAGES) and m in reach(m))
    assert circles == []


def _package(module: str) -> str:
    # A module's own package face (its __init__) re-exports it: not a circle of code.
    return module.rsplit(".", 1)[0]


@functools.cache
def _defined(path: Path) -> frozenset[str]:
    """The names a module defines at its top level (functions, classes, assignments);
    each module parsed once, however many importers ask."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return frozenset(names)


def _exported(path: Path) -> list[str]:
    """The names in a module's ``__all__`` (none if it has none)."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if (isinstance(node, ast.Assign) and isinstance(node.value, (ast.List, ast.Tuple))
                and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)):
            return [e.value for e in node.value.elts if isinstance(e, ast.Constant)]
    return []


#: The modules of the three packages, not their package faces (``__init__``), by name.
HOMES = {_module(path): path for package in PACKAGES for path in (SRC / package).rglob("*.py")
         if path.name != "__init__.py"}


def test_a_module_exports_only_its_own_names() -> None:
    """No module of the three packages re-exports another's names: each name has one home
    (a package's __init__ is its face and may gather them)."""
    borrowed = sorted(f"{module}: {name}" for module, path in HOMES.items()
                      for name in sorted(set(_exported(path)) - _defined(path)))
    assert borrowed == []


def test_importers_import_a_name_from_its_home() -> None:
    """``from <module> import name`` names a name the module defines (or a submodule), in
    src/, tests/ and benchmarks/: nothing is taken from a module that only imported it."""
    root = SRC.parent.parent
    files = [*SRC.rglob("*.py"), *(root / "tests").rglob("*.py"),
             *(root / "benchmarks").rglob("*.py")]
    # Only a file whose text has such an import is parsed (most have none): ``from``, any
    # whitespace or line continuation, a module of the three packages.
    maybe = re.compile(rf"\bfrom[\s\\]+ibkr_connection\.(?:{'|'.join(PACKAGES)})\b")
    strays = []
    for path in files:
        text = path.read_text(encoding="utf-8")
        if not maybe.search(text):
            continue
        for node in ast.walk(ast.parse(text)):
            if (isinstance(node, ast.ImportFrom) and node.level == 0
                    and node.module in HOMES):
                defined = _defined(HOMES[node.module])
                strays += [f"{path.relative_to(root)}: {node.module}.{alias.name}"
                           for alias in node.names if alias.name not in defined]
    assert sorted(strays) == []
