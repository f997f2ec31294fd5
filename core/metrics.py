"""A broker-wide metrics registry (counters, gauges, histograms) rendered as Prometheus text.

Every door feeds the same registry (``broker.metrics``); the HTTP door's
``GET /metrics`` renders it. Two kinds of source:

- instruments a caller updates as things happen (``counter``, ``gauge``,
  ``histogram``), for what only the caller sees: requests and their latency
  per protocol, open connections;
- collectors, called at scrape time, for what the broker already counts:
  messages and bytes in per topic, out per group, lag, store and pop state
  (``broker_collector``). Nothing is counted twice.

Names follow the Prometheus conventions (``ferrymq_`` prefix, base units,
``_total`` on counters) and use the OpenTelemetry messaging vocabulary for
labels where one applies: ``protocol`` (messaging.system: kafka, rocketmq,
mqtt, http), ``topic`` (messaging.destination.name), ``queue``
(messaging.destination.partition.id), ``group``
(messaging.consumer.group.name), ``operation`` (messaging.operation.type).
The format is Prometheus text exposition 0.0.4.
"""

from __future__ import annotations

import bisect
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .metadata import Metadata
from .pop import PopService
from .stats import Counters
from .store.filecache import FILE_KINDS, FileCache
from .store.repair import DamageStats
from .store.store import MessageStore
from .timers import TimerStats
from .transactions import TransactionStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds; Prometheus client's defaults reach down to 5 ms, a broker's requests
# go well below that.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


# Supervision (core/supervisor.py, gateways/supervision.py): what a contained failure or
# an enforced limit leaves behind. (name, help, label names), registered by whoever
# counts first; the same triple everywhere keeps the registry's type check happy.
TASK_FAILURES = ("ferrymq_task_failures_total",
                 "Background task failures (each one logged, then the task restarted with "
                 "backoff), per task.", ("task",))
CONNECTION_ERRORS = ("ferrymq_connection_errors_total",
                     "Connections ended by an exception their handler did not answer, per "
                     "protocol and kind (internal: a bug; protocol: bad input the door did not "
                     "answer; broken: the peer went away mid-request).", ("protocol", "kind"))
CONNECTIONS_CLOSED = ("ferrymq_connections_closed_total",
                      "Connections the broker closed because a limit ran out, per protocol "
                      "and reason (handshake_timeout, idle_timeout, frame_timeout, "
                      "send_timeout, tls_handshake_failed).", ("protocol", "reason"))
CONNECTIONS_REFUSED = ("ferrymq_connections_refused_total",
                       "Connections refused at accept, per protocol and reason "
                       "(max_connections, max_connections_per_address).",
                       ("protocol", "reason"))
INFLIGHT_BYTES = ("ferrymq_inflight_request_bytes",
                  "Request bytes being received or handled under the broker-wide budget "
                  "(max_inflight_bytes).", ())
INFLIGHT_WAITS = ("ferrymq_inflight_request_waits_total",
                  "Times a connection stopped reading because the request-bytes budget was "
                  "spent, per protocol.", ("protocol",))


@dataclass(frozen=True, slots=True)
class Sample:
    suffix: str  # "" or "_bucket", "_sum", "_count"
    labels: tuple[tuple[str, str], ...]
    value: float


@dataclass(slots=True)
class Family:
    """What a collector yields: one metric name, its type and help, and samples."""

    name: str
    kind: str  # counter | gauge | histogram
    help: str
    samples: list[Sample] = field(default_factory=list)

    def add(self, value: float, **labels: object) -> None:
        self.samples.append(Sample("", tuple((k, str(v)) for k, v in labels.items()), value))


class _Counter:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class _Gauge(_Counter):
    __slots__ = ()

    def set(self, value: float) -> None:
        self.value = value

    def dec(self, amount: float = 1.0) -> None:
        self.value -= amount


class _Histogram:
    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


_Child = TypeVar("_Child", bound=_Counter | _Histogram)


class Instrument(Generic[_Child]):
    """A labelled family of counters, gauges or histograms. ``labels(*values)``
    returns the child for those label values (cache it on hot paths). The type
    parameter is the child's type: a counter's children have no ``set``."""

    def __init__(self, name: str, kind: str, help: str, labelnames: Sequence[str],
                 new_child: Callable[[], _Child]) -> None:
        self.name, self.kind, self.help = name, kind, help
        self.labelnames = tuple(labelnames)
        self._new_child = new_child
        self._children: dict[tuple[str, ...], _Child] = {}

    def labels(self, *values: object) -> _Child:
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            if len(key) != len(self.labelnames):
                raise ValueError(f"{self.name} takes labels {self.labelnames}")
            child = self._children[key] = self._new_child()
        return child

    def family(self) -> Family:
        fam = Family(self.name, self.kind, self.help)
        for key, child in self._children.items():
            labels = tuple(zip(self.labelnames, key, strict=True))
            if isinstance(child, _Histogram):
                cumulative = 0
                for bound, n in zip((*child.bounds, math.inf), child.counts, strict=True):
                    cumulative += n
                    fam.samples.append(Sample("_bucket", (*labels, ("le", _num(bound))),
                                              cumulative))
                fam.samples.append(Sample("_sum", labels, child.sum))
                fam.samples.append(Sample("_count", labels, child.count))
            else:
                fam.samples.append(Sample("", labels, child.value))
        return fam


# OpenTelemetry-style names beside the Prometheus ones (docs/observability.md): the same
# samples again under the name and attribute names an OpenTelemetry pipeline (its
# Prometheus exporter: dots become underscores) would give them, so dashboards built on
# OpenTelemetry's messaging conventions find them. Prometheus name -> (OTel-style name,
# label renames).
OTEL_NAMES: dict[str, tuple[str, dict[str, str]]] = {
    "ferrymq_door_messages_in_total": (
        "messaging_client_sent_messages_total",
        {"protocol": "messaging_system", "topic": "messaging_destination_name"}),
    "ferrymq_door_messages_out_total": (
        "messaging_client_consumed_messages_total",
        {"protocol": "messaging_system", "topic": "messaging_destination_name"}),
    "ferrymq_request_duration_seconds": (
        "messaging_client_operation_duration_seconds",
        {"protocol": "messaging_system", "request": "messaging_operation_name"}),
    "ferrymq_group_lag_messages": (
        "messaging_consumer_lag_messages",
        {"group": "messaging_consumer_group_name", "topic": "messaging_destination_name",
         "queue": "messaging_destination_partition_id"}),
    "ferrymq_connections": ("messaging_server_connections", {"protocol": "messaging_system"}),
}
OTHER = "_other"  # the label value past a cap (max_topic_labels, max_lag_series)
DEFAULT_MAX_TOPIC_LABELS = 1000
DEFAULT_MAX_LAG_SERIES = 10_000


def _otel_family(fam: Family) -> Family | None:
    alias = OTEL_NAMES.get(fam.name)
    if alias is None:
        return None
    name, renames = alias
    return Family(name, fam.kind, fam.help + " (OpenTelemetry-style name.)",
                  [Sample(s.suffix, tuple((renames.get(k, k), v) for k, v in s.labels),
                          s.value) for s in fam.samples])


class MetricsRegistry:
    """The broker's instruments and collectors. Cardinality stays bounded:
    ``max_topic_labels`` distinct topics per door in the per-door message counters,
    ``max_lag_series`` lag series (group, topic, queue); past either the rest are summed
    under the label value ``_other`` (set from ``[metrics]``, docs/operations.md).
    ``otel_names``: render the OpenTelemetry-style copies (``OTEL_NAMES``)."""

    def __init__(self) -> None:
        self._instruments: dict[str, Instrument[Any]] = {}
        self._collectors: list[Callable[[], Iterable[Family]]] = []
        self.max_topic_labels = DEFAULT_MAX_TOPIC_LABELS
        self.max_lag_series = DEFAULT_MAX_LAG_SERIES
        self.otel_names = True

    def _get(self, name: str, kind: str, help: str, labelnames: Sequence[str],
             new_child: Callable[[], _Child]) -> Instrument[_Child]:
        inst = self._instruments.get(name)
        if inst is None:
            inst = self._instruments[name] = Instrument(name, kind, help, labelnames, new_child)
        elif inst.kind != kind or inst.labelnames != tuple(labelnames):
            raise ValueError(f"metric {name} is registered as a {inst.kind} "
                             f"with labels {inst.labelnames}")
        return inst

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Instrument[_Counter]:
        if not name.endswith("_total"):
            raise ValueError("a counter's name ends in _total (Prometheus naming)")
        return self._get(name, "counter", help, labelnames, _Counter)

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Instrument[_Gauge]:
        return self._get(name, "gauge", help, labelnames, _Gauge)

    def histogram(self, name: str, help: str, labelnames: Sequence[str] = (),
                  buckets: Sequence[float] = LATENCY_BUCKETS) -> Instrument[_Histogram]:
        bounds = tuple(sorted(buckets))
        return self._get(name, "histogram", help, labelnames, lambda: _Histogram(bounds))

    def add_collector(self, collector: Callable[[], Iterable[Family]]) -> None:
        self._collectors.append(collector)

    def families(self) -> list[Family]:
        out = [inst.family() for inst in self._instruments.values()]
        for collect in self._collectors:
            out.extend(collect())
        if self.otel_names:
            out.extend(f for f in map(_otel_family, list(out)) if f is not None)
        return out

    def render(self) -> str:
        """Prometheus text exposition format 0.0.4 of every family, sorted by name."""
        lines: list[str] = []
        for fam in sorted(self.families(), key=lambda f: f.name):
            lines.append(f"# HELP {fam.name} {_escape_help(fam.help)}")
            lines.append(f"# TYPE {fam.name} {fam.kind}")
            for s in fam.samples:
                if s.labels:
                    inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in s.labels)
                    lines.append(f"{fam.name}{s.suffix}{{{inner}}} {_num(s.value)}")
                else:
                    lines.append(f"{fam.name}{s.suffix} {_num(s.value)}")
        return "\n".join(lines) + "\n"


class DoorMetrics:
    """The instruments every door feeds, under one protocol label: open and accepted
    connections, request latency (histogram) and errors, per request name.

    ``protocol`` is OpenTelemetry's messaging.system value (``kafka``,
    ``rocketmq``, ``mqtt``, ``http``). Request names are the protocol's own
    (Kafka API names, RocketMQ request codes, MQTT packet types, HTTP operation
    ids). Observers are cached per request name: one dict lookup and one bisect
    per observation."""

    def __init__(self, registry: MetricsRegistry, protocol: str) -> None:
        self.protocol = protocol
        self._latency = registry.histogram(
            "ferrymq_request_duration_seconds",
            "Time to answer a request, per protocol and request (operation).",
            ("protocol", "request"))
        self._errors = registry.counter(
            "ferrymq_request_errors_total",
            "Requests answered with an error, per protocol, request and error code.",
            ("protocol", "request", "error"))
        self._connections = registry.gauge(
            "ferrymq_connections", "Open client connections, per protocol.",
            ("protocol",)).labels(protocol)
        self._accepted = registry.counter(
            "ferrymq_connections_accepted_total", "Connections accepted, per protocol.",
            ("protocol",)).labels(protocol)
        self._observers: dict[str, _Histogram] = {}
        self._registry = registry
        self._in = registry.counter(
            "ferrymq_door_messages_in_total",
            "Messages stored through a door, per protocol and topic (at most max_topic_labels "
            "topics per door; the rest under topic=\"_other\").", ("protocol", "topic"))
        self._out = registry.counter(
            "ferrymq_door_messages_out_total",
            "Messages a door delivered to consumers, per protocol and topic (capped like "
            "ferrymq_door_messages_in_total).", ("protocol", "topic"))
        self._in_by_topic: dict[str, _Counter] = {}
        self._out_by_topic: dict[str, _Counter] = {}

    def _topic_child(self, cache: dict[str, _Counter], inst: Instrument[_Counter], topic: str
                     ) -> _Counter:
        child = cache.get(topic)
        if child is None:  # a new topic: its own series, or _other past the cap
            key = topic if len(cache) < self._registry.max_topic_labels else OTHER
            child = cache.get(key)
            if child is None:
                child = cache[key] = inst.labels(self.protocol, key)
        return child

    def messages_in(self, topic: str, n: int = 1) -> None:
        """``n`` messages of ``topic`` stored through this door."""
        self._topic_child(self._in_by_topic, self._in, topic).inc(n)

    def messages_out(self, topic: str, n: int = 1) -> None:
        """``n`` messages of ``topic`` delivered by this door."""
        self._topic_child(self._out_by_topic, self._out, topic).inc(n)

    def connection_opened(self) -> None:
        self._connections.inc()
        self._accepted.inc()

    def connection_closed(self) -> None:
        self._connections.dec()

    def observe(self, request: str, seconds: float) -> None:
        obs = self._observers.get(request)
        if obs is None:
            obs = self._observers[request] = self._latency.labels(self.protocol, request)
        obs.observe(seconds)

    def error(self, request: str, code: str) -> None:
        self._errors.labels(self.protocol, request, code).inc()


def _num(v: float) -> str:
    if v == math.inf:
        return "+Inf"
    if v == -math.inf:
        return "-Inf"
    if v != v:
        return "NaN"
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


def _escape_label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")


def broker_collector(counters: Counters, meta: Metadata, store: MessageStore, data_dir: str,
                     started_at: Callable[[], int], pop: PopService,
                     disk_pressure: Callable[[], tuple[bool, int]] = lambda: (False, 0),
                     max_lag_series: Callable[[], int] = lambda: DEFAULT_MAX_LAG_SERIES
                     ) -> Callable[[], Iterable[Family]]:
    """The families the broker counts itself, read at scrape time (the Broker installs
    it with its own parts: this module knows no Broker)."""

    def collect() -> Iterable[Family]:
        c = counters
        m_in = Family("ferrymq_messages_in_total", "counter",
                      "Messages stored, per topic, through every door.")
        b_in = Family("ferrymq_bytes_in_total", "counter",
                      "Bytes stored (records as written), per topic, through every door.")
        for name, tc in sorted(c.topics.items()):
            m_in.add(tc.messages_in, topic=name)
            b_in.add(tc.bytes_in, topic=name)
        m_out = Family("ferrymq_messages_out_total", "counter",
                       "Messages delivered to consumer groups, per group and topic.")
        b_out = Family("ferrymq_bytes_out_total", "counter",
                       "Stored record bytes delivered to consumer groups, per group and topic.")
        for (group, topic), gc in sorted(c.groups.items()):
            m_out.add(gc.messages_out, group=group, topic=topic)
            b_out.add(gc.bytes_out, group=group, topic=topic)
        lag = Family("ferrymq_group_lag_messages", "gauge",
                     "Messages between a group's committed offset and the queue's end (at "
                     "most max_lag_series series; past it, per group and topic with "
                     "queue=\"_other\").")
        cap = max_lag_series()
        for group, topic_offsets in sorted(meta.offsets.items()):
            for topic, queues in sorted(topic_offsets.items()):
                if topic not in meta.topics:
                    continue
                lags = [(qid, max(0, store.queue_bounds(topic, qid)[1] - committed))
                        for qid, committed in sorted(queues.items())]
                if len(lag.samples) + len(lags) <= cap:
                    for qid, n in lags:
                        lag.add(n, group=group, topic=topic, queue=qid)
                else:
                    lag.add(sum(n for _, n in lags), group=group, topic=topic, queue=OTHER)
        stored = Family("ferrymq_topic_messages", "gauge",
                        "Messages currently retained, per topic.")
        for t in sorted(meta.topics.values(), key=lambda t: t.name):
            stored.add(sum(hi - lo for lo, hi in (store.queue_bounds(t.name, q)
                                                  for q in range(t.queues))), topic=t.name)
        cl = store.commitlog
        disk = Family("ferrymq_store_commitlog_bytes", "gauge",
                      "Bytes of CommitLog retained on disk (write position minus minimum).")
        disk.add(max(0, cl.write_pos - cl.min_offset))
        fs = Family("ferrymq_store_disk_used_ratio", "gauge",
                    "Used fraction of the file system holding the store.")
        try:
            st = os.statvfs(data_dir)
            total = st.f_blocks * st.f_frsize
            fs.add((total - st.f_bavail * st.f_frsize) / total if total else 0.0)
        except OSError:
            pass
        failures = Family("ferrymq_store_flush_failures_total", "counter",
                          "fsync failures (the store refuses writes after one).")
        failures.add(c.flush_failures)
        topics = Family("ferrymq_topics", "gauge", "Topics.")
        topics.add(len(meta.topics))
        groups = Family("ferrymq_groups", "gauge", "Consumer groups.")
        groups.add(len(meta.groups))
        start = Family("ferrymq_start_time_seconds", "gauge",
                       "When the broker started, in seconds since the epoch.")
        start.add(started_at() / 1000)
        out = [m_in, b_in, m_out, b_out, lag, stored, disk, fs, failures, topics, groups, start]
        out.extend(store_file_families(store.files))
        out.extend(store_damage_families(store.repairs.stats))
        refusing, refused = disk_pressure()
        f = Family("ferrymq_store_writes_refused", "gauge",
                   "1 while producers' writes are refused: the disk is above max_disk_ratio.")
        f.add(1 if refusing else 0)
        out.append(f)
        f = Family("ferrymq_store_refused_puts_total", "counter",
                   "Producers' writes refused for disk pressure.")
        f.add(refused)
        out.append(f)
        inflight = Family("ferrymq_pop_inflight_messages", "gauge",
                          "Messages popped and neither acked nor revived yet.")
        inflight.add(pop.in_flight())
        out.append(inflight)
        for key, help in (("acks", "Pop receipts acked."),
                          ("revived", "Pop leases that ran out and were redelivered."),
                          ("dead_lettered", "Messages moved to %DLQ% after too many "
                                            "deliveries."),
                          ("stale_acks", "Acks refused with a stale receipt handle."),
                          ("invalid_receipts", "Acks refused with a forged or malformed "
                                               "receipt handle.")):
            f = Family(f"ferrymq_pop_{key}_total", "counter", help)
            f.add(pop.stats[key])
            out.append(f)
        return out

    return collect


def store_damage_families(stats: DamageStats) -> list[Family]:
    """Damage the store found and went past (core/store/repair.py, docs/storage.md
    "Damage"): every one of these is also an ERROR line. Alert on any increase."""
    out = []
    for name, value, help in (
            ("ranges", stats.ranges, "Damaged CommitLog ranges skipped (records after them kept)."),
            ("bytes", stats.bytes, "Bytes in the damaged CommitLog ranges."),
            ("messages", stats.messages, "Messages lost with damaged records (their "
                                         "ConsumeQueue entries are marked lost)."),
            ("entries", stats.entries, "ConsumeQueue entries found wrong and written again "
                                       "from the CommitLog."),
            ("index_entries", stats.index_entries, "Key index entries pointing at no valid "
                                                   "record.")):
        f = Family(f"ferrymq_store_damaged_{name}_total", "counter", help)
        f.add(value)
        out.append(f)
    return out


def store_file_families(files: FileCache) -> list[Family]:
    """The store's file cache (core/store/filecache.py, docs/storage.md): files open per
    kind against the budget, descriptors they hold, opens and evictions per kind."""
    by_kind = files.open_by_kind()
    open_files = Family("ferrymq_store_open_files", "gauge",
                        "Store files held open (mapped), per kind: commitlog, consumequeue, "
                        "index.")
    opens = Family("ferrymq_store_file_opens_total", "counter",
                   "Store files opened (mapped) by the file cache, per kind.")
    evictions = Family("ferrymq_store_file_evictions_total", "counter",
                       "Store files closed to stay within max_open_files, per kind.")
    for kind in FILE_KINDS:
        open_files.add(by_kind.get(kind, 0), kind=kind)
        opens.add(files.opens[kind], kind=kind)
        evictions.add(files.evictions[kind], kind=kind)
    budget = Family("ferrymq_store_open_files_budget", "gauge",
                    "max_open_files: the file cache's budget in slots (an open file takes one "
                    "per descriptor it holds, at least one).")
    budget.add(files.budget)
    fds = Family("ferrymq_store_file_descriptors", "gauge",
                 "Descriptors the store's open files hold.")
    fds.add(files.descriptors())
    return [open_files, opens, evictions, budget, fds]


def services_collector(timers: Callable[[], TimerStats],
                       transactions: Callable[[], TransactionStats]
                       ) -> Callable[[], Iterable[Family]]:
    """Timers and transactions, read at scrape time from their services' stats."""

    def collect() -> Iterable[Family]:
        t = timers()
        x = transactions()
        out = []
        for name, kind, help, value in (
            ("ferrymq_timers_pending", "gauge", "Timed messages waiting for their time.",
             t.pending),
            ("ferrymq_timers_scheduled_total", "counter", "Timed messages accepted.",
             t.scheduled),
            ("ferrymq_timers_delivered_total", "counter", "Timed messages delivered.",
             t.delivered),
            ("ferrymq_timers_cancelled_total", "counter", "Timers cancelled before their time.",
             t.cancelled),
            ("ferrymq_timers_dropped_total", "counter",
             "Timers due but undeliverable (topic gone, record lost).", t.dropped),
            ("ferrymq_timer_lateness_p99_seconds", "gauge",
             "99th percentile of how late timed messages were delivered (recent).",
             (t.lateness_p99_ms or 0.0) / 1000),
            ("ferrymq_transactions_half", "gauge",
             "Half messages waiting for their commit or rollback.", x.pending),
            ("ferrymq_transactions_committed_total", "counter", "Transactions committed.",
             x.committed),
            ("ferrymq_transactions_rolled_back_total", "counter", "Transactions rolled back.",
             x.rolled_back),
            ("ferrymq_transactions_discarded_total", "counter",
             "Halves discarded after too many unanswered checks.", x.discarded),
        ):
            f = Family(name, kind, help)
            f.add(value)
            out.append(f)
        return out

    return collect
