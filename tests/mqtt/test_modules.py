"""The MQTT door's module map (docs/mqtt.md): one job per file and no import cycle.

Every import counts, ``if TYPE_CHECKING:`` ones included: a cycle hidden from
the interpreter is still two modules that cannot be read one at a time."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = {"gateways/mqtt": "gateways.mqtt", "protocols/mqtt": "protocols.mqtt"}


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).glob("*.py"):
            name = f"{package}.{path.stem}"
            deps = graph.setdefault(name, set())
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ImportFrom) and node.level == 1:
                    if node.module:
                        deps.add(f"{package}.{node.module.split('.')[0]}")
                    else:
                        deps.update(f"{package}.{a.name}" for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 3 and node.module:
                    # from ...protocols.mqtt.codec import x (from gateways/mqtt)
                    parts = node.module.split(".")
                    if len(parts) >= 3 and ".".join(parts[:2]) in PACKAGES.values():
                        deps.add(".".join(parts[:3]))
            deps.discard(f"{package}.__init__")
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return [*stack[stack.index(m):], m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_cycle_in_the_mqtt_packages() -> None:
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()) or [])


def test_only_the_door_entry_imports_the_connection_handler() -> None:
    importers = {n for n, deps in _graph().items() if "gateways.mqtt.client" in deps}
    assert importers == {"gateways.mqtt.__init__"}


def test_the_cycle_check_sees_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
