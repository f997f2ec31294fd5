"""The project's code as data, for the tests that keep its architecture honest.

``import_graph`` reads every module of the four packages with ``ast`` and returns
who imports whom; ``cycles`` finds the strongly connected components of a graph.
``facade_bypasses`` lists the places in the doors that reach past the ``Broker``
facade. Run as a script, it prints the counts the architecture notes quote.

What counts as an import: every ``import x.y``, ``from x import y``, ``from . import
y``, ``from .a import b`` and ``from ..a.b import c``, absolute or relative, at
module level, inside functions and classes, and under ``if TYPE_CHECKING:`` too:
a module that names another's types depends on it as much as one that calls it,
and a cycle through annotations is still two modules that cannot be understood
one without the other. An import names its target module; ``from pkg import
name`` names ``pkg.name`` when that is a module, else ``pkg`` (its ``__init__``).
Importing ``a.b.c`` also runs ``a/__init__`` and ``a/b/__init__``: those implicit
edges are left out (a package's ``__init__`` is already running whenever one of
its own modules is imported, so they would only add cycles nobody can act on).
"""

from __future__ import annotations

import ast
import pathlib
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

ROOT = pathlib.Path(__file__).resolve().parents[1]
FOLDERS = {"core": "ferrymq.core", "protocols": "ferrymq.protocols",
           "gateways": "ferrymq.gateways", "clients": "ferrymq.clients"}


def modules() -> dict[str, pathlib.Path]:
    """Every module of the four packages: dotted name -> file."""
    out = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join([package, *parts])] = path
    return out


def _is_package(path: pathlib.Path) -> bool:
    return path.name == "__init__.py"


def _resolve(importer: str, path: pathlib.Path, level: int, module: str | None) -> str:
    """The absolute module a (possibly relative) ``from`` clause names."""
    if not level:
        return module or ""
    base = importer.split(".")
    if not _is_package(path):
        base = base[:-1]  # a module's package is its parent; a package's is itself
    base = base[:len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, *(module.split(".") if module else [])])


@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str
    line: int


def imports_of(name: str, path: pathlib.Path, known: Mapping[str, pathlib.Path]) -> list[Edge]:
    """The project modules ``name`` imports, each with the line of the import."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    out.append(Edge(name, alias.name, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(name, path, node.level, node.module)
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in known:
                    out.append(Edge(name, sub, node.lineno))
                elif target in known:
                    out.append(Edge(name, target, node.lineno))
    return [e for e in out if e.target != name]


def import_graph(prefix: str = "ferrymq.") -> dict[str, set[str]]:
    """Who imports whom among the modules whose name starts with ``prefix``."""
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        if not name.startswith(prefix):
            continue
        graph[name] = {e.target for e in imports_of(name, path, known)
                       if e.target.startswith(prefix)}
    return graph


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan),
    each sorted, largest first: every one is an import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        # An explicit stack: deep graphs must not hit the recursion limit.
        work: list[tuple[str, Iterator[str]]] = [(v, iter(sorted(graph.get(v, ()))))]
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        while work:
            node, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on_stack:
                    low[node] = min(low[node], index[w])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found, key=lambda c: (-len(c), c))


def cycle_edges(graph: Mapping[str, Iterable[str]]) -> list[tuple[str, str]]:
    """The imports that lie inside a cycle (both ends in one component)."""
    out = []
    for component in cycles(graph):
        members = set(component)
        out.extend((a, b) for a in component for b in sorted(graph.get(a, ())) if b in members)
    return out


def _defined_names(tree: ast.AST) -> set[str]:
    """Every name a module defines itself: functions, classes, assigned names and
    attributes (``self._x = ...``), class fields, import aliases."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            out.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            out.add(node.attr)
        elif isinstance(node, ast.alias):
            out.add(node.asname or node.name.split(".")[0])
        elif isinstance(node, ast.arg):
            out.add(node.arg)
    return out


@dataclass(frozen=True, slots=True)
class Reach:
    path: str
    line: int
    text: str


_NAMEDTUPLE_API = frozenset(("_replace", "_make", "_asdict", "_fields"))


def private_reaches(folders: Iterable[str] = tuple(FOLDERS)) -> list[Reach]:
    """``x._name`` used from outside ``x``: ``x`` is not ``self``/``cls``, and either
    an attribute of something (``self.broker._waiters``) or a name whose ``_name``
    the module does not define itself (``rec._I32``, ``broker._after_put`` in a
    service). A bare name of a class the module defines (``broker._close_sync()``
    in broker.py) is that class's own business. Dunders, and a NamedTuple's public API
    (``_replace``, ``_make``, ``_asdict``, ``_fields``), do not count."""
    out = []
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            own = _defined_names(tree)
            for node in ast.walk(tree):
                if not isinstance(node, ast.Attribute):
                    continue
                attr = node.attr
                if not attr.startswith("_") or attr.startswith("__") or attr in _NAMEDTUPLE_API:
                    continue
                if isinstance(node.value, ast.Name) and (node.value.id in ("self", "cls")
                                                         or attr in own):
                    continue  # its own, or (a bare name) an object of a class defined here
                out.append(Reach(str(path.relative_to(ROOT)), node.lineno, ast.unparse(node)))
    return out


# What a door may use of a Broker besides its public methods: documented attributes.
BROKER_ATTRIBUTES = frozenset(("config", "metrics"))
_BROKER_NAMES = frozenset(("broker", "_broker"))


def _broker_class() -> ast.ClassDef:
    tree = ast.parse((ROOT / "core" / "broker.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "Broker":
            return node
    raise LookupError("no class Broker in core/broker.py")


def broker_api() -> frozenset[str]:
    """The facade: the public methods and properties of ``core.broker.Broker``, and
    ``BROKER_ATTRIBUTES``."""
    names = {n.name for n in _broker_class().body
             if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
             and not n.name.startswith("_")}
    return frozenset(names | BROKER_ATTRIBUTES)


def broker_internals() -> frozenset[str]:
    """What a Broker has that is not its facade: the attributes it assigns itself
    (``self.store = ...``), its private methods."""
    cls = _broker_class()
    names = {n.attr for n in ast.walk(cls) if isinstance(n, ast.Attribute)
             and isinstance(n.ctx, ast.Store) and isinstance(n.value, ast.Name)
             and n.value.id == "self"}
    names |= {n.name for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return frozenset(names - broker_api())


def _is_broker(node: ast.expr, aliases: set[str]) -> bool:
    if isinstance(node, ast.Name):
        return node.id in _BROKER_NAMES or node.id in aliases
    return isinstance(node, ast.Attribute) and node.attr in _BROKER_NAMES


def _broker_aliases(scope: ast.AST) -> set[str]:
    """Local names bound to the broker in a function: ``b = self.broker``, a
    parameter annotated ``Broker``."""
    aliases: set[str] = set()
    for node in ast.walk(scope):
        if isinstance(node, ast.arg) and node.annotation is not None \
                and "Broker" in ast.unparse(node.annotation).split("|")[0].strip("\"' "):
            aliases.add(node.arg)
    changed = True
    while changed:
        changed = False
        for node in ast.walk(scope):
            if isinstance(node, ast.Assign) and _is_broker(node.value, aliases):
                for t in node.targets:
                    if isinstance(t, ast.Name) and t.id not in aliases:
                        aliases.add(t.id)
                        changed = True
    return aliases


def facade_bypasses(folder: str = "gateways", exempt: Iterable[str] = (),
                    root: pathlib.Path = ROOT) -> list[Reach]:
    """Uses of a broker in ``folder`` (the doors) of what it has besides its facade
    (``broker_internals``): ``broker.meta``, ``self.broker.store``, ``b._closing``,
    ``broker.pop_service``... A broker is a name ``broker``, an attribute
    ``.broker``/``._broker``, a local bound to one, or a parameter annotated
    ``Broker``. ``exempt`` are paths relative to ``root`` (the repository)."""
    internals = broker_internals()
    skip = set(exempt)
    out = []
    for path in sorted((root / folder).rglob("*.py")):
        rel = str(path.relative_to(root))
        if rel in skip:
            continue
        tree = ast.parse(path.read_text(), rel)
        scopes = [n for n in ast.walk(tree)
                  if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))]
        seen: set[tuple[int, int]] = set()
        for scope in [tree, *scopes]:
            aliases = _broker_aliases(scope) if scope is not tree else set()
            for node in ast.walk(scope):
                if isinstance(node, ast.Attribute) and _is_broker(node.value, aliases) \
                        and (node.attr in internals or node.attr.startswith("_")) \
                        and (node.lineno, node.col_offset) not in seen:
                    seen.add((node.lineno, node.col_offset))
                    out.append(Reach(rel, node.lineno, ast.unparse(node)))
    return sorted(out, key=lambda r: (r.path, r.line))


if __name__ == "__main__":
    graph = import_graph()
    found = cycles(graph)
    print(f"import cycles (strongly connected components): {len(found)}")
    for c in found:
        print("  " + " <-> ".join(m.removeprefix("ferrymq.") for m in c))
    reaches = private_reaches()
    print(f"private members used across modules: {len(reaches)}")
    for r in reaches:
        print(f"  {r.path}:{r.line}: {r.text}")
    bypasses = facade_bypasses()
    print(f"facade bypasses in gateways/: {len(bypasses)}")
    for r in bypasses:
        print(f"  {r.path}:{r.line}: {r.text}")
    sys.exit(0)
