"""The repository layout DESIGN.md fixes: four code folders mapped onto ferrymq.*, imports
that respect who may import whom, and no I/O in protocols/.

The checker reads every import form with ``ast``: ``import ferrymq.core.x``, ``from
ferrymq import core``, ``from ferrymq.core import x``, relative imports of every
depth (``from . import x``, ``from ..core import broker``, ``from ... import core``),
imports inside functions and classes and under ``if TYPE_CHECKING:``, and
``importlib.import_module("...")`` / ``__import__("...")`` with a literal name (with
a literal ``package=`` or ``__package__`` for a relative one). The probes at the end
write one file per form and check that the checker catches it.
"""

from __future__ import annotations

import ast
import pathlib
import textwrap
import tomllib
from collections.abc import Iterator

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FOLDERS = {"core": "ferrymq.core", "protocols": "ferrymq.protocols",
           "gateways": "ferrymq.gateways", "clients": "ferrymq.clients"}
# folder -> folders it may import from (DESIGN.md, "Layout and who may import whom")
ALLOWED = {
    "protocols": set(),
    "core": {"protocols"},
    "gateways": {"core", "protocols", "clients"},
    "clients": {"protocols"},
}
# protocols/ is sans-I/O: none of these anywhere in it, in any import form.
IO_MODULES = {"trio", "socket", "asyncio", "selectors", "ssl", "threading", "anyio", "httpx",
              "socketserver", "subprocess", "multiprocessing", "concurrent", "http.client",
              "urllib.request", "aiohttp", "requests"}


def _packages_on_disk() -> set[str]:
    out = set()
    for folder, package in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            out.add(".".join([package, *rel.parts]) if rel.parts else package)
    return out


def test_every_package_folder_is_listed_in_pyproject() -> None:
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(conf["tool"]["setuptools"]["packages"])
    assert _packages_on_disk() == listed


def test_folders_are_mapped_to_subpackages() -> None:
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    mapping = conf["tool"]["setuptools"]["package-dir"]
    assert mapping == {package: folder for folder, package in FOLDERS.items()}


# ---------------------------------------------------------------- the checker

def module_name(root: pathlib.Path, path: pathlib.Path) -> tuple[str, bool]:
    """(dotted name, is a package) of a file under one of the four folders of ``root``."""
    rel = path.relative_to(root).with_suffix("")
    parts = ["ferrymq", *rel.parts]
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def _relative(importer: str, is_package: bool, level: int, module: str | None) -> str | None:
    """The absolute name of a relative import, or None if it climbs above ``ferrymq``."""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    if level - 1 >= len(base):
        return None
    base = base[:len(base) - (level - 1)]
    return ".".join([*base, *(module.split(".") if module else [])])


def _literal(node: ast.expr | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def imported_names(path: pathlib.Path, importer: str, is_package: bool
                   ) -> Iterator[tuple[str, int]]:
    """Every absolute module name ``path`` imports (``from a import b`` gives ``a`` and
    ``a.b``: b may be a module), with its line; "<escapes>" for a relative import that
    climbs above the package and "<dynamic>" for an import_module of a non-literal."""
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or "" if not node.level else _relative(
                importer, is_package, node.level, node.module)
            if base is None:
                yield "<escapes>", node.lineno
                continue
            if base:
                yield base, node.lineno
            for alias in node.names:
                yield f"{base}.{alias.name}" if base else alias.name, node.lineno
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else \
                func.id if isinstance(func, ast.Name) else None
            if name not in ("import_module", "__import__") or not node.args:
                continue
            target = _literal(node.args[0])
            if target is None:
                yield "<dynamic>", node.lineno
                continue
            if target.startswith("."):
                level = len(target) - len(target.lstrip("."))
                package = next((_literal(k.value) for k in node.keywords if k.arg == "package"),
                               None)
                if package is None and len(node.args) > 1:
                    package = _literal(node.args[1])
                if package is not None:
                    resolved = _relative(package + ".x", False, level, target[level:] or None)
                else:  # package=__package__ / __name__: relative to the importer itself
                    resolved = _relative(importer, is_package, level, target[level:] or None)
                yield resolved or "<escapes>", node.lineno
            else:
                yield target, node.lineno


def layer_violations(root: pathlib.Path) -> list[str]:
    """Imports under ``root``'s four folders that break the layers or bring I/O into
    protocols/, one line each."""
    bad = []
    for folder, allowed in ALLOWED.items():
        for path in sorted((root / folder).rglob("*.py")):
            importer, is_package = module_name(root, path)
            where = path.relative_to(root)
            for name, line in imported_names(path, importer, is_package):
                if name == "<dynamic>" and folder == "gateways":
                    continue  # gateways may import anything: a computed name is fine there
                if name in ("<escapes>", "<dynamic>"):
                    bad.append(f"{where}:{line}: {name[1:-1]} import")
                    continue
                parts = name.split(".")
                if parts[0] == "ferrymq" and len(parts) > 1 and parts[1] in FOLDERS \
                        and parts[1] != folder and parts[1] not in allowed:
                    bad.append(f"{where}:{line}: {folder} imports {parts[1]} ({name})")
                if folder == "protocols" and (parts[0] in IO_MODULES
                                              or ".".join(parts[:2]) in IO_MODULES):
                    bad.append(f"{where}:{line}: I/O in protocols ({name})")
    return bad


def test_imports_respect_the_layers_and_protocols_do_no_io() -> None:
    bad = layer_violations(ROOT)
    assert not bad, "\n".join(bad)


# ---------------------------------------------------------------- the checker, checked

PROBES = {
    # (folder, file, source): each must be caught
    "absolute module": ("core", "m.py", "import ferrymq.gateways.server\n"),
    "absolute dotted from": ("core", "m.py", "from ferrymq.gateways.server import serve\n"),
    "from ferrymq import folder": ("protocols", "m.py", "from ferrymq import core\n"),
    "from ferrymq import folder, renamed": ("clients", "m.py",
                                            "from ferrymq import gateways as g\n"),
    "relative, depth 2": ("core", "m.py", "from ..gateways import server\n"),
    "relative, depth 2, bare": ("core", "m.py", "from .. import gateways\n"),
    "relative, depth 3 from a subpackage": ("core", "store/m.py",
                                            "from ...gateways.http import api\n"),
    "relative, depth 3, bare": ("protocols", "kafka/m.py", "from ... import core\n"),
    "relative from a package __init__": ("clients", "sub/__init__.py",
                                         "from ...core import broker\n"),
    "relative above the package": ("core", "m.py", "from .... import x\n"),
    "inside a function": ("core", "m.py", "def f():\n    from ..gateways import server\n"),
    "inside a class": ("clients", "m.py", "class K:\n    import ferrymq.core.broker\n"),
    "under TYPE_CHECKING": ("protocols", "m.py", """
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from ..core.broker import Broker
        """),
    "import_module, absolute": ("core", "m.py",
                                "import importlib\nimportlib.import_module('ferrymq.gateways.cli')\n"),
    "import_module, relative with package": ("clients", "m.py", """
        from importlib import import_module
        import_module("..core.broker", package="ferrymq.clients")
        """),
    "import_module, relative to __package__": ("protocols", "m.py", """
        import importlib
        importlib.import_module("..gateways", __package__)
        """),
    "import_module, not a literal": ("core", "m.py",
                                     "import importlib\nimportlib.import_module(NAME)\n"),
    "__import__": ("core", "m.py", "__import__('ferrymq.gateways')\n"),
    "io: trio": ("protocols", "m.py", "import trio\n"),
    "io: socket in a function": ("protocols", "m.py", "def f():\n    import socket\n"),
    "io: asyncio under TYPE_CHECKING": ("protocols", "kafka/m.py", """
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            import asyncio
        """),
    "io: from selectors": ("protocols", "m.py", "from selectors import DefaultSelector\n"),
    "io: ssl": ("protocols", "m.py", "import ssl as _ssl\n"),
    "io: threading": ("protocols", "m.py", "from threading import Lock\n"),
    "io: anyio by import_module": ("protocols", "m.py",
                                   "import importlib\nimportlib.import_module('anyio')\n"),
    "io: httpx": ("protocols", "m.py", "import httpx\n"),
    "io: http.client": ("protocols", "m.py", "from http.client import HTTPConnection\n"),
}


def _tree(root: pathlib.Path, folder: str, file: str, source: str) -> None:
    for f in FOLDERS:
        (root / f).mkdir(parents=True, exist_ok=True)
        (root / f / "__init__.py").touch()
    path = root / folder / file
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / "__init__.py").touch()
    path.write_text(textwrap.dedent(source))


@pytest.mark.parametrize("form", sorted(PROBES))
def test_the_checker_catches_every_form(form: str, tmp_path: pathlib.Path) -> None:
    _tree(tmp_path, *PROBES[form])
    assert layer_violations(tmp_path), f"not caught: {form}"


@pytest.mark.parametrize("folder, file, source", [
    ("gateways", "m.py", "from ..core import broker\nimport ferrymq.clients.producer\n"),
    ("core", "store/m.py", "from ...protocols import record\nfrom . import other\n"),
    ("clients", "m.py", "from ferrymq import protocols\nimport importlib\n"
                        "importlib.import_module('..protocols.kafka', 'ferrymq.clients')\n"),
    ("protocols", "kafka/m.py", "from ..errors import ProtocolError\nimport struct, mmap\n"
                                "from http import HTTPStatus\n"),
])
def test_the_checker_lets_allowed_imports_pass(folder: str, file: str, source: str,
                                               tmp_path: pathlib.Path) -> None:
    _tree(tmp_path, folder, file, source)
    assert layer_violations(tmp_path) == []
