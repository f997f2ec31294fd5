"""The recent past, for charts: throughput, connections per door, per-topic rates and lags over time.

The broker counts since start (messages and bytes in per topic, out per group,
lag as committed offset against the queue's end); a chart needs the same
numbers over time. ``History`` samples them every ``console_sample_s`` seconds
(5) and keeps the last ``console_history`` samples (360: half an hour) in
memory, as the broker's own bookkeeping (``SYSTEM`` principal). A restart
starts it afresh, as the counters do; a long view belongs to Prometheus
scraping ``/metrics``.

Bounded: a sample holds the totals, each door's connections, and at most
``console_max_series`` topics (the busiest) and as many (group, topic, queue)
lags (the largest); the answer says ``truncated`` when some were left out.
Sampling reads counters and queue ends only: no message is read.

``GET /v1/stats/history`` shows what the asking principal may see: topics it
may DESCRIBE, lags of groups it may DESCRIBE, totals and connections if it
may DESCRIBE the cluster. Rates are per second between consecutive samples
(null where there is no previous sample or a counter went back).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import trio

from ...core.access import SYSTEM, Principal
from ...core.broker import Broker
from ...core.errors import FerryError
from ...core.message import now_ms
from .api import GROUP_SCHEMA, TOPIC_SCHEMA, ok_resp
from .app import json_response
from .routing import Param, Route
from .server import Request, Response

log = logging.getLogger("ferrymq.http")

OPTIONS = ("console_sample_s", "console_history", "console_max_series")
DEFAULT_SAMPLE_S = 5.0
DEFAULT_LENGTH = 360
DEFAULT_MAX_SERIES = 200

NUMBERS = {"type": "array", "items": {"type": ["number", "null"]}}
HISTORY_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["interval_s", "times", "topics", "lags", "truncated"],
    "properties": {
        "interval_s": {"type": "number"},
        "times": {"type": "array", "items": {"type": "integer"}},
        "messages_in": NUMBERS, "bytes_in": NUMBERS, "messages_out": NUMBERS,
        "connections": {"type": "object", "additionalProperties": NUMBERS},
        "topics": {"type": "object", "additionalProperties": NUMBERS,
                   "description": "Messages in per second, per topic"},
        "lags": {"type": "array", "items": {
            "type": "object", "required": ["group", "topic", "queue", "lag"],
            "properties": {"group": {"type": "string"}, "topic": {"type": "string"},
                           "queue": {"type": "integer"}, "lag": NUMBERS}}},
        "truncated": {"type": "boolean"}},
}


@dataclass(frozen=True, slots=True)
class Sample:
    t: int  # epoch ms
    totals: tuple[int, int, int]  # messages in, bytes in, messages out (since start)
    connections: dict[str, int]
    topics: dict[str, int]  # messages in since start
    lags: dict[tuple[str, str, int], int]
    truncated: bool


def _options(options: dict[str, Any]) -> tuple[float, int, int]:
    sample_s = options.get("console_sample_s", DEFAULT_SAMPLE_S)
    length = options.get("console_history", DEFAULT_LENGTH)
    series = options.get("console_max_series", DEFAULT_MAX_SERIES)
    if isinstance(sample_s, bool) or not isinstance(sample_s, int | float) \
            or not 0.05 <= sample_s <= 3600:
        raise ValueError("[http] console_sample_s must be 0.05..3600 seconds")
    for name, v, hi in (("console_history", length, 100_000),
                        ("console_max_series", series, 100_000)):
        if isinstance(v, bool) or not isinstance(v, int) or not 2 <= v <= hi:
            raise ValueError(f"[http] {name} must be an integer 2..{hi}")
    return float(sample_s), length, series


class History:
    """The samples and the route that shows them; ``run`` samples until cancelled."""

    def __init__(self, broker: Broker, options: dict[str, Any]) -> None:
        self.broker = broker
        self.interval_s, length, self.max_series = _options(options)
        self.samples: deque[Sample] = deque(maxlen=length)
        self.failures = 0

    def sample(self, now_ms: int) -> None:
        b = self.broker
        traffic = b.traffic(principal=SYSTEM)
        conns = {door: n for door, (n, _) in b.door_connections(principal=SYSTEM).items()}
        topics = {t: m for t, (m, _) in traffic.topics.items()}
        truncated = len(topics) > self.max_series
        if truncated:
            topics = dict(sorted(topics.items(), key=lambda kv: (-kv[1], kv[0]))[:self.max_series])
        lags = {(x.group, x.topic, x.queue_id): x.lag for x in b.group_lags(principal=SYSTEM)}
        if len(lags) > self.max_series:
            truncated = True
            lags = dict(sorted(lags.items(), key=lambda kv: (-kv[1], kv[0]))[:self.max_series])
        self.samples.append(Sample(now_ms, (traffic.messages_in, traffic.bytes_in,
                                            traffic.messages_out), conns, topics, lags,
                                   truncated))

    async def run(self) -> None:
        """Sample every interval until cancelled. A failed sample is logged and counted,
        never the end of the door."""
        while True:
            try:
                self.sample(now_ms())
            except Exception:  # a bug here must cost a sample, never the door
                self.failures += 1
                log.exception("console history sample failed (%d so far)", self.failures)
            await trio.sleep(self.interval_s)

    # ------------------------------------------------------------ the route

    def doc(self, who: Principal, group: str | None, topic: str | None,
            lags: bool) -> dict[str, Any]:
        b = self.broker
        samples = list(self.samples)
        times = [s.t for s in samples]
        out: dict[str, Any] = {"interval_s": self.interval_s, "times": times,
                               "truncated": any(s.truncated for s in samples)}
        try:
            b.broker_stats(principal=who)  # totals and connections: the cluster's
            cluster = True
        except FerryError:
            cluster = False
        if cluster:
            for i, name in enumerate(("messages_in", "bytes_in", "messages_out")):
                out[name] = _rates(times, [s.totals[i] for s in samples])
            doors = sorted({d for s in samples for d in s.connections})
            out["connections"] = {d: [s.connections.get(d) for s in samples] for d in doors}
        visible = {t.name for t in b.topics(principal=who)}
        names = sorted({t for s in samples for t in s.topics
                        if t in visible and (topic is None or t == topic)})
        out["topics"] = {t: _rates(times, [s.topics.get(t) for s in samples]) for t in names}
        out["lags"] = []
        if lags:
            groups = set(b.known_groups(principal=who))
            keys = sorted({k for s in samples for k in s.lags
                           if k[0] in groups and (group is None or k[0] == group)
                           and (topic is None or k[1] == topic)})
            out["lags"] = [{"group": g, "topic": t, "queue": q,
                            "lag": [s.lags.get((g, t, q)) for s in samples]} for g, t, q in keys]
        return out

    async def history(self, req: Request) -> Response:
        p = req.params
        return json_response(self.doc(req.principal, p.get("group"), p.get("topic"),
                                      p.get("lags", True)))

    def routes(self) -> list[Route]:
        return [Route(
            "GET", "/v1/stats/history", self.history, "stats_history",
            "The last samples of throughput, connections, topic rates and lags", "admin",
            (Param("group", "query", GROUP_SCHEMA, description="Only this group's lags"),
             Param("topic", "query", TOPIC_SCHEMA, description="Only this topic's series"),
             Param("lags", "query", {"type": "boolean"},
                   description="Include lags per group and queue (default true)")),
            None, True, {200: ok_resp(HISTORY_SCHEMA)})]


def _rates(times: list[int], counts: list[int | None]) -> list[float | None]:
    """Per-second rates between consecutive samples; None without a previous value, or
    when the counter went back (a deleted and re-created topic)."""
    out: list[float | None] = [None]
    for i in range(1, len(counts)):
        a, c = counts[i - 1], counts[i]
        dt = (times[i] - times[i - 1]) / 1000
        if a is None or c is None or c < a or dt <= 0:
            out.append(None)
        else:
            rate = (c - a) / dt
            out.append(round(rate, 3) if math.isfinite(rate) else None)
    return out[:len(counts)]
