"""The repository layout DESIGN.md fixes: four code folders mapped onto ferrymq.*, imports
that respect who may import whom."""

from __future__ import annotations

import ast
import pathlib
import tomllib

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


def _imported_folders(path: pathlib.Path, folder: str) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    depth = len(path.relative_to(ROOT / folder).parts)  # 1 = directly in the folder
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            if node.level > depth:
                top = (node.module or "").split(".")[0]
                found.add(top)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ferrymq."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("ferrymq."):
                    found.add(alias.name.split(".")[1])
    return found - {folder}


def test_imports_respect_the_layers() -> None:
    bad = []
    for folder, allowed in ALLOWED.items():
        for path in (ROOT / folder).rglob("*.py"):
            extra = _imported_folders(path, folder) - allowed
            if extra:
                bad.append(f"{path.relative_to(ROOT)} imports {sorted(extra)}")
    assert not bad, "\n".join(bad)
