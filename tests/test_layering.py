"""pyc10d's layering: no module imports from a higher layer.

Every module under ``pyc10d/`` is parsed with :mod:`ast` (nothing is imported) and every import of
a pyc10d module is collected: absolute and relative, at module level, inside functions and under
``TYPE_CHECKING``. ``from PKG import NAME`` counts as an import of ``PKG.NAME`` when that is a
module, else of ``PKG`` itself (so ``from pyc10d import ProcessGroup`` imports the top level).
A module may import from its own layer and the layers below it, never from a higher one.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "pyc10d"
TOP = "pyc10d"

# the layer of each subpackage / top-level module of pyc10d, bottom to top
LAYERS = {
    "core": 0,
    "store": 1,
    "rendezvous": 1,
    "transport": 2,
    "collectives": 3,
    "process_group": 4,
    "api": 5,
    "dist2": 5,
    "futures": 5,
    "nn": 6,
    "data": 6,
    "launcher": 6,
    "run": 6,
    "algorithms": 6,
    "optim": 6,
    "testing": 6,
    "torch_backend": 6,
}
TOP_LAYER = 7  # pyc10d/__init__.py


def modules(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Every module under ``package_dir`` by dotted name (a package by its ``__init__.py``)."""
    found = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def components(package_dir: Path = PACKAGE_DIR) -> set[str]:
    """The subpackages and top-level modules of the package (each must have a layer)."""
    packages = {p.name for p in package_dir.iterdir() if (p / "__init__.py").is_file()}
    top_modules = {p.stem for p in package_dir.glob("*.py") if p.name != "__init__.py"}
    return packages | top_modules


def layer_of(module: str) -> int | None:
    """The layer of a pyc10d module, or None if its subpackage has none."""
    parts = module.split(".")
    if parts == [TOP]:
        return TOP_LAYER
    return LAYERS.get(parts[1])


def _ours(name: str | None) -> bool:
    return name is not None and (name == TOP or name.startswith(TOP + "."))


def _from_base(package: str, node: ast.ImportFrom) -> str | None:
    """The module a ``from ... import`` statement imports from, relative ones resolved."""
    if not node.level:
        return node.module
    parts = package.split(".")
    if node.level - 1 >= len(parts):
        return None  # beyond the top-level package
    base = ".".join(parts[: len(parts) - (node.level - 1)])
    return f"{base}.{node.module}" if node.module else base


def imported_modules(
    name: str, is_package: bool, source: str, known: set[str]
) -> list[tuple[str, int]]:
    """(pyc10d module, line) for every import of one in ``source``, the code of module ``name``.

    ``known`` are the package's module names: ``from PKG import NAME`` imports ``PKG.NAME`` when
    that is one of them, else ``PKG``.
    """
    package = name if is_package else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names if _ours(alias.name)]
        elif isinstance(node, ast.ImportFrom):
            base = _from_base(package, node)
            if not _ours(base):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in known else base, node.lineno))
    return found


def upward_imports(package_dir: Path = PACKAGE_DIR) -> list[str]:
    """``module -> imported module`` for every import from a higher (or unplaced) layer."""
    mods = modules(package_dir)
    known = set(mods)
    bad = []
    for name, path in sorted(mods.items()):
        layer = layer_of(name)
        is_package = path.name == "__init__.py"
        targets = imported_modules(name, is_package, path.read_text(), known)
        for target, line in sorted(set(targets), key=lambda t: (t[1], t[0])):
            target_layer = layer_of(target)
            if layer is None or target_layer is None or target_layer > layer:
                bad.append(f"{name} -> {target} (line {line}: layer {layer} -> {target_layer})")
    return bad


def test_every_subpackage_and_top_level_module_has_a_layer():
    missing = sorted(components() - set(LAYERS))
    assert not missing, (
        f"pyc10d subpackage(s)/module(s) {missing} have no layer: place them in LAYERS "
        "in tests/test_layering.py"
    )


def test_no_module_imports_from_a_higher_layer():
    bad = upward_imports()
    assert not bad, (
        f"{len(bad)} import(s) from a higher layer (layers: {LAYERS}, pyc10d/__init__.py: "
        f"{TOP_LAYER}):\n" + "\n".join(bad)
    )


# -- the checker itself ------------------------------------------------------------------------
SAMPLE = """
from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pyc10d.core.errors
from . import state
from .state import helper
from ..store import TCPStore
from .. import core

if TYPE_CHECKING:
    from ..nn import DistributedDataParallel


def late():
    from pyc10d import ProcessGroup
    import torch

    return ProcessGroup, torch, os
"""
SAMPLE_KNOWN = {"pyc10d", "pyc10d.api", "pyc10d.api.state", "pyc10d.core", "pyc10d.core.errors"}
SAMPLE_KNOWN |= {"pyc10d.nn", "pyc10d.store"}


def test_imports_are_collected_everywhere_and_resolved():
    found = imported_modules("pyc10d.api.groups", False, SAMPLE, SAMPLE_KNOWN)
    assert sorted(target for target, _ in found) == [
        "pyc10d",  # from pyc10d import ProcessGroup, inside a function
        "pyc10d.api.state",
        "pyc10d.api.state",
        "pyc10d.core",
        "pyc10d.core.errors",
        "pyc10d.nn",  # under TYPE_CHECKING
        "pyc10d.store",
    ]
    in_package = imported_modules("pyc10d.api", True, "from . import state", SAMPLE_KNOWN)
    assert in_package == [("pyc10d.api.state", 1)]


def test_an_upward_import_is_reported(tmp_path):
    package = tmp_path / TOP
    for sub in ("core", "store"):
        (package / sub).mkdir(parents=True)
    (package / "__init__.py").write_text("from .store import Store\n")
    (package / "core" / "__init__.py").write_text("")
    (package / "core" / "errors.py").write_text("def f():\n    from ..store import base\n")
    (package / "store" / "__init__.py").write_text("from ..core import errors\n")
    (package / "store" / "base.py").write_text("import pyc10d\n")
    assert upward_imports(package) == [
        "pyc10d.core.errors -> pyc10d.store.base (line 2: layer 0 -> 1)",
        "pyc10d.store.base -> pyc10d (line 1: layer 1 -> 7)",
    ]
