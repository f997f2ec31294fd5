"""The architecture docs/architecture.md draws, held by tests: no import cycles, one facade.

The graph comes from tests/code_graph.py, which reads every import form (its
docstring says which count: all of them, TYPE_CHECKING ones included).
"""

from __future__ import annotations

import pathlib
import textwrap

import pytest
from code_graph import (
    ROOT,
    cycles,
    facade_bypasses,
    import_graph,
    imports_of,
    modules,
    private_reaches,
)


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


# ---------------------------------------------------------------- the doors

DOORS = sorted(name.rsplit(".", 1)[1] for name, path in modules().items()
               if name.startswith("ferrymq.gateways.") and path.name == "__init__.py")


@pytest.mark.parametrize("door", DOORS)
def test_door_package_has_no_import_cycles(door: str) -> None:
    found = cycles(import_graph(f"ferrymq.gateways.{door}"))
    assert not found, _show(found)


def test_the_gateways_as_a_whole_have_no_other_cycles() -> None:
    found = [c for c in cycles(import_graph("ferrymq.gateways"))
             if not all(m.startswith("ferrymq.gateways.mqtt.") for m in c)]
    assert not found, _show(found)


# In-process benchmarks that measure a core part itself, not a door.
FACADE_EXEMPT = (
    "gateways/bench/store.py",  # the store beside a bare append loop: reads a stored record
    "gateways/bench/timers.py",  # the timer service's own lateness histogram, reset per burst
    "gateways/bench/admin.py",  # how many state records a restart replayed (the state log's count)
    "gateways/bench/compaction.py",  # flushes the CommitLog: a pass takes only flushed records
)


def test_doors_use_the_broker_facade_only() -> None:
    """No door reads ``broker.meta`` or ``broker.store``, a service of the broker
    (``broker.timers``, ``broker.pop_service``...), or a private member: everything
    a door needs is a public Broker method, so every call passes one access check."""
    found = {(r.path, r.text) for r in facade_bypasses("gateways", exempt=FACADE_EXEMPT)}
    assert not found, "\n".join(f"{p}: {t}" for p, t in sorted(found))


def test_the_facade_check_sees_what_it_should(tmp_path: pathlib.Path) -> None:
    """The seal's own test: each way of reaching past the broker is caught."""
    (tmp_path / "gateways").mkdir()
    (tmp_path / "gateways" / "probe.py").write_text(textwrap.dedent("""
        def f(self, ctx, broker: "Broker"):
            b = self.broker
            b.store.queues
            ctx.broker.meta.topics
            broker._paths
            self._broker.pop_service
            broker.put(None)
            broker.config.data_dir
    """))
    found = sorted(r.text for r in facade_bypasses("gateways", root=tmp_path))
    assert found == ["b.store", "broker._paths", "ctx.broker.meta", "self._broker.pop_service"]


def test_door_modules_use_no_private_member_of_another() -> None:
    found = [f"{r.path}:{r.line}: {r.text}" for r in private_reaches(["gateways"])
             if not r.path.startswith("gateways/mqtt/")]
    assert not found, "\n".join(found)
