"""``ferrymq top``: a live view of a broker, refreshed every second from its /metrics.

What it shows (docs/cli.md): messages per second in and out per door and per topic,
consumer lag per group, open connections per door, timers and transactions pending.
The source is the HTTP door's ``GET /metrics`` (Prometheus text, core/metrics.py): the
rates are the differences of the counters between two scrapes, so ``top`` needs no
other API and sees every door. On a terminal it draws a rich ``Live`` view and quits
on ``q`` or Ctrl-C; piped (or with ``--json``) it prints one JSON object per refresh.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import click

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
DEFAULT_URL = "http://127.0.0.1:8080"
MAX_BODY = 64 << 20  # a /metrics body larger than this is refused (a broker with huge label sets)
TOP_ROWS = 15  # rows per table on a terminal

_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text: family name -> [(labels, value)]."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = _LINE.match(line)
        if m is None:
            continue
        labels = {k: v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
                  for k, v in _LABEL.findall(m.group(2) or "")}
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        out.setdefault(m.group(1), []).append((labels, value))
    return out


def _sum_by(samples: list[tuple[dict[str, str], float]], *keys: str) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for labels, v in samples:
        k = tuple(labels.get(x, "") for x in keys)
        out[k] = out.get(k, 0.0) + v
    return out


@dataclass
class Snapshot:
    """What one refresh shows; rates need the previous snapshot."""

    at: float
    in_by_door_topic: dict[tuple[str, ...], float] = field(default_factory=dict)
    out_by_door_topic: dict[tuple[str, ...], float] = field(default_factory=dict)
    lag_by_group: dict[str, float] = field(default_factory=dict)
    connections: dict[str, float] = field(default_factory=dict)
    gauges: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, text: str, at: float) -> Snapshot:
        m = parse_metrics(text)
        s = cls(at)
        s.in_by_door_topic = _sum_by(m.get("ferrymq_door_messages_in_total", []),
                                     "protocol", "topic")
        s.out_by_door_topic = _sum_by(m.get("ferrymq_door_messages_out_total", []),
                                      "protocol", "topic")
        s.lag_by_group = {k[0]: v for k, v in
                          _sum_by(m.get("ferrymq_group_lag_messages", []), "group").items()}
        s.connections = {k[0]: v for k, v in
                         _sum_by(m.get("ferrymq_connections", []), "protocol").items()}
        for name in ("ferrymq_timers_pending", "ferrymq_transactions_half",
                     "ferrymq_pop_inflight_messages", "ferrymq_topics", "ferrymq_groups"):
            s.gauges[name] = sum(v for _, v in m.get(name, []))
        return s


def _rates(now: dict[tuple[str, ...], float], before: dict[tuple[str, ...], float] | None,
           seconds: float) -> dict[tuple[str, ...], float]:
    if before is None or seconds <= 0:
        return {k: 0.0 for k in now}
    return {k: max(0.0, v - before.get(k, 0.0)) / seconds for k, v in now.items()}


def view(now: Snapshot, before: Snapshot | None) -> dict[str, Any]:
    """The numbers of one refresh as a JSON-able document (numbers as numbers)."""
    dt = now.at - before.at if before is not None else 0.0
    rin = _rates(now.in_by_door_topic, before.in_by_door_topic if before else None, dt)
    rout = _rates(now.out_by_door_topic, before.out_by_door_topic if before else None, dt)
    doors: dict[str, dict[str, float]] = {}
    for (door, _t), r in rin.items():
        doors.setdefault(door, {"in_per_s": 0.0, "out_per_s": 0.0})["in_per_s"] += r
    for (door, _t), r in rout.items():
        doors.setdefault(door, {"in_per_s": 0.0, "out_per_s": 0.0})["out_per_s"] += r
    for door, n in now.connections.items():
        doors.setdefault(door, {"in_per_s": 0.0, "out_per_s": 0.0})["connections"] = int(n)
    topics: dict[str, dict[str, float]] = {}
    for (_d, topic), r in rin.items():
        topics.setdefault(topic, {"in_per_s": 0.0, "out_per_s": 0.0})["in_per_s"] += r
    for (_d, topic), r in rout.items():
        topics.setdefault(topic, {"in_per_s": 0.0, "out_per_s": 0.0})["out_per_s"] += r
    return {
        "time": round(now.at, 3), "interval_s": round(dt, 3),
        "doors": [{"door": d, "in_per_s": round(v["in_per_s"], 1),
                   "out_per_s": round(v["out_per_s"], 1),
                   "connections": int(v.get("connections", 0))} for d, v in sorted(doors.items())],
        "topics": sorted(({"topic": t, "in_per_s": round(v["in_per_s"], 1),
                           "out_per_s": round(v["out_per_s"], 1)} for t, v in topics.items()),
                         key=lambda r: (-r["in_per_s"] - r["out_per_s"], r["topic"])),
        "groups": sorted(({"group": g, "lag": int(n)} for g, n in now.lag_by_group.items()),
                         key=lambda r: (-r["lag"], r["group"])),
        "timers_pending": int(now.gauges.get("ferrymq_timers_pending", 0)),
        "transactions_pending": int(now.gauges.get("ferrymq_transactions_half", 0)),
        "pop_in_flight": int(now.gauges.get("ferrymq_pop_inflight_messages", 0)),
    }


def render(doc: dict[str, Any], url: str) -> Any:
    """The rich renderable of one refresh."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    head = Text.assemble(
        ("ferrymq top ", "bold"), (url, "cyan"),
        f"   timers pending {doc['timers_pending']}   transactions pending "
        f"{doc['transactions_pending']}   pop in flight {doc['pop_in_flight']}   "
        "(q quits)")
    doors = Table(title="doors", expand=True)
    for c in ("DOOR", "IN/S", "OUT/S", "CONNECTIONS"):
        doors.add_column(c, justify="left" if c == "DOOR" else "right")
    for r in doc["doors"]:
        doors.add_row(r["door"], f"{r['in_per_s']:,.1f}", f"{r['out_per_s']:,.1f}",
                      f"{r['connections']:,}")
    topics = Table(title="topics", expand=True)
    for c in ("TOPIC", "IN/S", "OUT/S"):
        topics.add_column(c, justify="left" if c == "TOPIC" else "right")
    for r in doc["topics"][:TOP_ROWS]:
        topics.add_row(r["topic"], f"{r['in_per_s']:,.1f}", f"{r['out_per_s']:,.1f}")
    groups = Table(title="consumer lag", expand=True)
    groups.add_column("GROUP")
    groups.add_column("LAG", justify="right")
    for r in doc["groups"][:TOP_ROWS]:
        groups.add_row(r["group"], f"{r['lag']:,}")
    return Group(head, doors, topics, groups)


def scrape(url: str, token: str | None, timeout: float) -> str:
    req = urllib.request.Request(url.rstrip("/") + "/metrics")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read(MAX_BODY + 1)
    except urllib.error.HTTPError as exc:
        raise click.ClickException(f"{url}/metrics answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise click.ClickException(f"cannot reach {url}: {reason}") from None
    if len(body) > MAX_BODY:
        raise click.ClickException(f"{url}/metrics is larger than {MAX_BODY} bytes")
    return body.decode("utf-8", "replace")


@contextlib.contextmanager
def _keys() -> Iterator[Any]:
    """On a terminal: stdin in cbreak mode, yielding ``pressed(timeout) -> str | None``;
    elsewhere a ``pressed`` that only sleeps."""
    if not sys.stdin.isatty():
        def sleep_only(timeout: float) -> str | None:
            time.sleep(timeout)
            return None
        yield sleep_only
        return
    import termios
    import tty
    fd = sys.stdin.fileno()
    old = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def pressed(timeout: float) -> str | None:
        ready, _, _ = select.select([fd], [], [], max(0.0, timeout))
        return os.read(fd, 1).decode(errors="replace") if ready else None

    try:
        yield pressed
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, old)


@click.command(context_settings=CONTEXT)
@click.option("--url", envvar="FERRYMQ_HTTP_URL", default=DEFAULT_URL, show_default=True,
              help="The broker's HTTP door (its /metrics is read).")
@click.option("--token", envvar="FERRYMQ_TOKEN", help="Bearer token, when the door wants one.")
@click.option("-i", "--interval", type=click.FloatRange(min=0.05), default=1.0,
              show_default=True, help="Seconds between refreshes.")
@click.option("-n", "--iterations", type=click.IntRange(min=0), default=0,
              help="Stop after this many refreshes (0: until q or Ctrl-C).")
@click.option("--once", is_flag=True, help="One refresh after one interval (the same as -n 2: "
                                          "rates need two scrapes).")
@click.option("-o", "--output", type=click.Choice(["table", "json"]),
              help="table (default on a terminal) or JSON lines, one per refresh.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines (the same as -o json).")
def top(url: str, token: str | None, interval: float, iterations: int, once: bool,
        output: str | None, as_json: bool) -> None:
    """A live view of a broker: rates per door and topic, lag per group, connections."""
    fmt = "json" if as_json else output or ("table" if sys.stdout.isatty() else "json")
    if once:
        iterations = 2
    before: Snapshot | None = None
    n = 0
    if fmt == "json":
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                now = Snapshot.of(scrape(url, token, max(5.0, interval)), time.monotonic())
                n += 1
                if before is not None or iterations == 1:
                    click.echo(json.dumps(view(now, before)))
                before = now
                if iterations and n >= iterations:
                    return
                time.sleep(interval)
    from rich.console import Console
    from rich.live import Live

    console = Console()
    with contextlib.suppress(KeyboardInterrupt), _keys() as pressed, \
            Live(console=console, auto_refresh=False, screen=console.is_terminal) as live:
        while True:
            now = Snapshot.of(scrape(url, token, max(5.0, interval)), time.monotonic())
            n += 1
            live.update(render(view(now, before), url), refresh=True)
            before = now
            if iterations and n >= iterations:
                return
            if (pressed(interval) or "").lower() == "q":
                return


def register(main: click.Group) -> None:
    main.add_command(top)
