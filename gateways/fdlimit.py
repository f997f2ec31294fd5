"""The descriptor limit at start-up: what the broker needs, the soft limit raised if allowed, a warning.

Every connection of every door is a descriptor, and so is every file the store
holds open (``max_open_files``, core/store/filecache.py). A broker started under
a soft ``RLIMIT_NOFILE`` below what those need fails later and far from the
cause: ``accept`` answers EMFILE, checkpoints fail, puts are refused. So
``prepare_fd_limit`` runs before the broker opens its store:

- *need* = the file budget + each enabled door's connection limit + RESERVE;
- if the soft limit is below it and the hard limit is higher, the soft limit is
  raised to the hard one, as the JVM does for Kafka and RocketMQ (HotSpot's
  ``MaxFDLimit``) and as Mosquitto's packaging asks of operators;
- one WARNING line with the numbers says what was raised, and whether the
  limit still falls short (then: raise ``ulimit -n`` or ``LimitNOFILE=``, or
  lower ``max_open_files`` or the doors' ``max_connections``).

The budget is read after the raise: its default is a share of the soft limit.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import resource
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..core.store.filecache import default_budget
from .config import ServerConfig

log = logging.getLogger("ferrymq.server")

RESERVE = 64
"""Descriptors besides connections and store files: listeners (two for MQTT),
epoll and trio's wakeup pipe, stdio and the log, the store lock and directory
syncs, the timer wheel and its log, the pop journal, metadata and state writes."""

UNCAPPED_DOOR_CONNECTIONS = 1024
"""What a door that publishes no connection limit is counted at."""

NR_OPEN_FALLBACK = 1 << 20
"""The soft limit set when the hard limit is unlimited: Linux's default fs.nr_open."""


@dataclass(frozen=True, slots=True)
class FdPlan:
    """The numbers of the start-up check (descriptors)."""

    soft_before: int
    soft: int
    hard: int
    budget: int  # the store's file budget (slots: at most one descriptor each)
    connections: Mapping[str, int]  # door -> its connection limit
    reserve: int = RESERVE

    @property
    def need(self) -> int:
        return self.budget + sum(self.connections.values()) + self.reserve

    @property
    def raised(self) -> bool:
        return self.soft > self.soft_before

    @property
    def short(self) -> bool:
        return self.need > self.soft


def door_connection_limit(name: str, options: Mapping[str, Any]) -> int:
    """A door's connection limit: its ``max_connections`` option, else the default its
    package publishes as ``DEFAULT_MAX_CONNECTIONS``, else UNCAPPED_DOOR_CONNECTIONS."""
    value = options.get("max_connections")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    full = f"{__package__}.{name}"
    if importlib.util.find_spec(full) is not None:
        default = getattr(importlib.import_module(full), "DEFAULT_MAX_CONNECTIONS", None)
        if isinstance(default, int) and default > 0:
            return default
    return UNCAPPED_DOOR_CONNECTIONS


def _limits() -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return NR_OPEN_FALLBACK


def prepare_fd_limit(config: ServerConfig, doors: tuple[str, ...]) -> FdPlan:
    """Raise the soft descriptor limit if the broker needs more and the hard limit
    allows, log the outcome (one WARNING if anything was raised or is short), and
    return the numbers. ``doors`` are the enabled doors."""
    # The caps the connection supervisor enforces (config.ConnectionLimits; 0 = none).
    connections = {d: config.connection_limits(d).max_connections
                   or door_connection_limit(d, config.options(d)) for d in doors}
    soft_before, hard = _limits()
    soft = soft_before

    def plan(soft: int) -> FdPlan:
        budget = config.broker.max_open_files or default_budget()
        return FdPlan(soft_before, soft, hard, budget, connections)

    p = plan(soft)
    if p.short and (hard == resource.RLIM_INFINITY or hard > soft):
        target = _nr_open() if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the descriptor soft limit to %d: %s", target, exc)
        else:
            soft = target
        p = plan(soft)
    if p.short or p.raised:
        doors_text = " ".join(f"{d}={n}" for d, n in connections.items()) or "none"
        what = (f"raised the descriptor soft limit from {p.soft_before} to {p.soft} (hard "
                f"{_text(p.hard)})" if p.raised else
                f"the descriptor soft limit is {p.soft} (hard {_text(p.hard)})")
        verdict = ("still short" if p.raised else "short") if p.short else "enough"
        log.warning(
            "%s; the broker needs up to %d: max_open_files %d + connection limits (%s) + "
            "reserve %d: %s%s", what, p.need, p.budget, doors_text, p.reserve, verdict,
            "; raise ulimit -n / LimitNOFILE or lower max_open_files or max_connections"
            if p.short else "",
            extra={"fd_soft": p.soft, "fd_hard": p.hard, "fd_need": p.need})
    return p


def _text(n: int) -> str:
    return "unlimited" if n == resource.RLIM_INFINITY else str(n)
