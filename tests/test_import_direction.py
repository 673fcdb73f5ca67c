"""Imports run one way: a package of latup_edge imports only packages below it in ``LAYERS``.

Every ``import`` counts, wherever it is: at module level, inside a function, under
``if TYPE_CHECKING:``. Packages of one layer may import each other, but not in a cycle. And the
runtime, with everything it imports when it is imported, never imports a build-only package
(``BUILD_ONLY``): a clinic PC runs bundles with the base install alone.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "latup_edge"

# The order, lowest first: the one place it is written (README's architecture section states it).
# "__init__" is latup_edge/__init__.py (``__version__``); a module or package of latup_edge is named
# by its first component below latup_edge (``demo`` is latup_edge/demo.py).
LAYERS: list[tuple[str, ...]] = [
    ("__init__", "errors", "fileio"),
    ("data",),
    ("evaluate",),
    ("models",),
    ("scans",),
    ("runtime",),
    ("calibration",),
    ("deploy",),
    ("train",),
    ("demo",),
    ("cli",),
]
# The build extra's packages: the runtime never imports them on import (at most inside a function).
BUILD_ONLY = ("torch", "onnx", "nncf", "neural_compressor", "nilearn", "PIL")
RUNTIME = "runtime"


@dataclass(frozen=True)
class Import:
    """One imported name of one import statement, resolved to the module it loads."""

    module: str  # the importing module, dotted
    path: str  # its file, relative to the repository
    line: int
    target: str  # a latup_edge module (dotted), or a third-party top-level package
    deferred: bool  # inside a function or ``if TYPE_CHECKING:``: not run when the module is imported

    @property
    def internal(self) -> bool:
        return self.target == PACKAGE or self.target.startswith(f"{PACKAGE}.")

    def where(self) -> str:
        return f"{self.path}:{self.line}"


def unit(module: str) -> str:
    """The package of ``LAYERS`` a latup_edge module belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_of(name: str) -> int | None:
    return next((i for i, names in enumerate(LAYERS) if name in names), None)


def order() -> str:
    return " -> ".join("/".join(names) for names in LAYERS)


def module_name(path: Path, root: Path) -> tuple[str, bool]:
    """The dotted name of a source file under ``root``, and whether it is a package's ``__init__``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, deferred: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement under ``node``, and whether it runs only later (function, TYPE_CHECKING)."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node, deferred
        return
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        for child in node.body:
            yield from _walk(child, True)
        for child in node.orelse:
            yield from _walk(child, deferred)
        return
    inner = deferred or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
    for child in ast.iter_child_nodes(node):
        yield from _walk(child, inner)


def _nearest_known(target: str, known: set[str]) -> str:
    """``target`` if it is a module here, else its nearest ancestor that is (``latup_edge.shipped`` -> latup_edge)."""
    while target not in known and "." in target:
        target = target.rpartition(".")[0]
    return target


def module_imports(module: str, path: str, source: str, is_package: bool, known: set[str]) -> list[Import]:
    """The imports of one module; relative imports resolved, ``from P import m`` naming module P.m when it is one."""
    found: dict[Import, None] = {}  # ordered, and one entry for ``from PIL import Image, ImageDraw``
    for node, deferred in _walk(ast.parse(source, filename=path), False):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                package = module if is_package else module.rpartition(".")[0]
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - (node.level - 1)])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        for target in targets:
            internal = target == PACKAGE or target.startswith(f"{PACKAGE}.")
            resolved = _nearest_known(target, known) if internal else target.split(".")[0]
            found[Import(module, path, node.lineno, resolved, deferred)] = None
    return list(found)


def scan(root: Path = ROOT) -> list[Import]:
    """Every import of every module under ``root``/latup_edge."""
    files = sorted((root / PACKAGE).rglob("*.py"))
    names = {path: module_name(path, root) for path in files}
    known = {name for name, _ in names.values()}
    imports = []
    for path, (name, is_package) in names.items():
        relative = path.relative_to(root).as_posix()
        imports += module_imports(name, relative, path.read_text(), is_package, known)
    return imports


def direction_problems(imports: Iterable[Import], modules: Iterable[str]) -> list[str]:
    """Each import that goes up the order or closes a cycle within a layer, and each package outside LAYERS."""
    imports = [item for item in imports if item.internal]
    problems = [
        f"latup_edge.{name} is not in LAYERS: add it to the order in tests/test_import_direction.py"
        for name in sorted({unit(module) for module in modules})
        if layer_of(name) is None
    ]
    beside: dict[str, set[str]] = {}
    for item in imports:
        source, target = unit(item.module), unit(item.target)
        low, high = layer_of(target), layer_of(source)
        if source == target or low is None or high is None:
            continue
        if low > high:
            problems.append(
                f"{item.where()}: {item.module} imports {item.target}, but {source} may not import {target}, "
                f"which is above it (order: {order()})"
            )
        elif low == high:
            beside.setdefault(source, set()).add(target)
    for item in imports:
        source, target = unit(item.module), unit(item.target)
        if source != target and target in beside.get(source, ()) and source in _reachable(target, beside):
            problems.append(
                f"{item.where()}: {item.module} imports {item.target}, and {target} imports {source} back "
                f"(a cycle within one layer: {'/'.join(LAYERS[layer_of(source)])})"
            )
    return problems


def _reachable(start: str, graph: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _with_parents(module: str, known: set[str]) -> list[str]:
    """A module and the packages Python runs first to import it (latup_edge, latup_edge.runtime, ...)."""
    parts = module.split(".")
    return [name for name in (".".join(parts[: i + 1]) for i in range(len(parts))) if name in known]


def build_only_problems(imports: Iterable[Import], start: str = RUNTIME) -> list[str]:
    """Each build-only package that importing a module of ``start`` imports, with the chain that leads there."""
    imports = list(imports)
    known = {item.module for item in imports} | {item.target for item in imports if item.internal}
    on_import: dict[str, list[Import]] = {}
    for item in imports:
        if not item.deferred:
            on_import.setdefault(item.module, []).append(item)
    chain: dict[str, list[str]] = {}
    todo = []
    for module in sorted(m for m in known if unit(m) == start):
        for name in _with_parents(module, known):
            if name not in chain:
                chain[name] = [name]
                todo.append(name)
    problems = []
    while todo:
        module = todo.pop(0)
        for item in on_import.get(module, []):
            if not item.internal:
                if item.target in BUILD_ONLY:
                    problems.append(
                        f"{item.where()}: importing {' -> '.join(chain[module])} imports {item.target} at module level "
                        f"(the base install has no {item.target}: import it inside the function that needs it)"
                    )
                continue
            for name in _with_parents(item.target, known):
                if name not in chain:
                    chain[name] = [*chain[module], name]
                    todo.append(name)
    return problems


def _modules(root: Path = ROOT) -> list[str]:
    return [module_name(path, root)[0] for path in (root / PACKAGE).rglob("*.py")]


def test_imports_run_one_way():
    problems = direction_problems(scan(), _modules())
    assert not problems, "imports against the layer order:\n" + "\n".join(problems)


def test_the_runtime_imports_no_build_only_package():
    problems = build_only_problems(scan())
    assert not problems, "the runtime imports build-only packages:\n" + "\n".join(problems)


def _imports_of(sources: dict[str, str]) -> list[Import]:
    known = set(sources)
    return [
        item
        for name, source in sources.items()
        for item in module_imports(name, name.replace(".", "/") + ".py", source, False, known)
    ]


def test_the_checks_catch_an_upward_import_a_cycle_and_a_deferred_torch_only_when_it_runs():
    sources = {
        "latup_edge.runtime.a": "def f():\n    from latup_edge.deploy import b\n",
        "latup_edge.deploy.b": "from ..runtime import a\n",
        "latup_edge.errors": "from latup_edge import fileio\n",
        "latup_edge.fileio": "import latup_edge.errors\n",
        "latup_edge.runtime.c": "import numpy\nfrom latup_edge.models import m\ndef g():\n    import onnx\n",
        "latup_edge.models.m": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import PIL\nimport torch.nn\n",
    }
    imports = _imports_of(sources)
    problems = direction_problems(imports, sources)
    assert len(problems) == 3, problems
    assert "latup_edge/runtime/a.py:2: latup_edge.runtime.a imports latup_edge.deploy.b" in problems[0]
    assert all("a cycle within one layer" in problem for problem in problems[1:])
    (problem,) = build_only_problems(imports)
    assert problem.startswith("latup_edge/models/m.py:4: importing latup_edge.runtime.c -> latup_edge.models.m")
