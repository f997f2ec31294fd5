"""The architecture docs/architecture.md draws, held by tests: no import cycles, one facade.

The graph comes from tests/code_graph.py, which reads every import form (its
docstring says which count: all of them, TYPE_CHECKING ones included).
"""

from __future__ import annotations

import pathlib
import textwrap

import pytest
from code_graph import ROOT, cycles, import_graph, imports_of, modules, private_reaches


def _show(found: list[list[str]]) -> str:
    return "\n".join(" <-> ".join(c) for c in found)


# ---------------------------------------------------------------- the graph reader itself

def test_every_import_form_is_an_edge(tmp_path: pathlib.Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    for name in ("__init__", "a", "b", "c", "d", "e", "f", "g", "sub/__init__", "sub/h"):
        (pkg / f"{name}.py").write_text("")
    source = textwrap.dedent("""
        from __future__ import annotations
        import ferrymq.pkg.a
        from . import b
        from .c import something
        from .sub import h
        from ferrymq.pkg import d as renamed
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            from .e import Type
        def later():
            from .f import thing
        class K:
            import ferrymq.pkg.g
    """)
    main = pkg / "main.py"
    main.write_text(source)
    known = {f"ferrymq.pkg.{n}": pkg / f"{n}.py" for n in "abcdefg"}
    known |= {"ferrymq.pkg": pkg / "__init__.py", "ferrymq.pkg.sub": pkg / "sub/__init__.py",
              "ferrymq.pkg.sub.h": pkg / "sub/h.py", "ferrymq.pkg.main": main}
    targets = {e.target for e in imports_of("ferrymq.pkg.main", main, known)}
    assert targets == {f"ferrymq.pkg.{n}" for n in "abcdefg"} | {"ferrymq.pkg.sub.h"}


def test_a_relative_import_from_a_package_init_resolves_inside_it(tmp_path: pathlib.Path) -> None:
    pkg = tmp_path / "door"
    pkg.mkdir()
    init = pkg / "__init__.py"
    init.write_text("from .server import serve\nfrom ..core import broker\n")
    known = {"ferrymq.gateways.door": init, "ferrymq.gateways.door.server": pkg / "server.py",
             "ferrymq.gateways.core": pkg / "x.py"}
    targets = {e.target for e in imports_of("ferrymq.gateways.door", init, known)}
    assert targets == {"ferrymq.gateways.door.server", "ferrymq.gateways.core"}


def test_cycles_are_found_through_every_member() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}, "f": {"d"}}
    assert cycles(graph) == [["a", "b", "c"]]


# ---------------------------------------------------------------- the project

def test_the_graph_covers_every_module() -> None:
    graph = import_graph()
    assert set(graph) == set(modules())
    assert "ferrymq.core.paths" in graph["ferrymq.core.broker"]


def test_core_has_no_import_cycles() -> None:
    """The Broker imports its services; the services import the paths, never the Broker."""
    found = cycles(import_graph("ferrymq.core"))
    assert not found, _show(found)


def test_no_service_imports_the_broker() -> None:
    graph = import_graph("ferrymq.core")
    importers = sorted(m for m, targets in graph.items() if "ferrymq.core.broker" in targets)
    assert importers == ["ferrymq.core"], importers  # the package re-exports it


# Private members of another module the core still uses, each with the reason it stays.
CORE_PRIVATE_REACHES = {
    # core/store is another piece of work; these become public there.
    ("core/store/commitlog.py", "rec._I32"),
    ("core/store/store.py", "self.commitlog._segment_for"),
    ("core/timers.py", "self.store._describe"),  # the store's key extraction for the index
    ("core/broker.py", "self.store._open"),  # _close_sync: whether recovery got that far
}


def test_core_modules_use_no_private_member_of_another() -> None:
    found = {(r.path, r.text) for r in private_reaches(["core"])}
    assert found <= CORE_PRIVATE_REACHES, sorted(found - CORE_PRIVATE_REACHES)


def test_the_repository_root_is_the_one_the_graph_reads() -> None:
    assert (ROOT / "core" / "broker.py").is_file()


@pytest.mark.parametrize("name", ["config", "access", "paths"])
def test_new_core_modules_import_no_service(name: str) -> None:
    """The bottom of the core: configuration, principals and the paths know no service."""
    graph = import_graph("ferrymq.core")
    services = {f"ferrymq.core.{s}" for s in ("broker", "timers", "transactions", "retry", "pop")}
    assert not graph[f"ferrymq.core.{name}"] & services
