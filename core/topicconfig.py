"""Topic configs (Kafka's names): the one place they are validated, defaulted and described.

A topic's configs live in its ``TopicConfig.attributes`` (state log, namespace
``topic``) under Kafka's names, as normalized strings, and only the ones set
explicitly: a config not set follows the broker's default, so changing the
broker's default changes every topic that did not override it (Kafka's rule).
Every door goes through here: the Kafka door's CreateTopics, AlterConfigs,
IncrementalAlterConfigs and DescribeConfigs, the HTTP admin API's ``attributes``
and the CLI's ``--config``, all by way of ``Broker.create_topic`` /
``Broker.alter_topic_configs``.

Three kinds of config (docs/kafka.md, "Topic configs"):

- honoured: the broker acts on them (retention, cleanup policy, the message size
  limit, the timestamp type, ...);
- accepted: validated and kept, but with no effect here, with the reason in the
  documentation string (a value that would need a behaviour we do not have is
  refused instead: ``compression.type`` other than ``producer``,
  ``min.insync.replicas`` above 1);
- read-only: derived from the broker (the CommitLog's segments are shared by every
  topic, so ``segment.bytes`` is the broker's ``segment_size``); described with
  ``read_only``, refused when set.

Attribute keys without a dot are free-form labels (round 1's attributes, e.g.
``owner``) and are not configs; a key with a dot must be a known config.

Raises ``InvalidConfig`` (Kafka's INVALID_CONFIG) for an unknown name, a bad
value, a read-only config, or an operation a config does not take.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from .config import BrokerConfig
from .errors import InvalidConfig

LONG_MAX = (1 << 63) - 1
INT_MAX = (1 << 31) - 1

# DescribeConfigs sources (Kafka's ConfigSource ids).
SOURCE_DYNAMIC_TOPIC, SOURCE_STATIC_BROKER, SOURCE_DEFAULT = 1, 4, 5

# IncrementalAlterConfigs operations (Kafka's AlterConfigOp.OpType ids).
OP_SET, OP_DELETE, OP_APPEND, OP_SUBTRACT = 0, 1, 2, 3
OPERATIONS = {"set": OP_SET, "delete": OP_DELETE, "append": OP_APPEND, "subtract": OP_SUBTRACT}

# Kafka's ConfigType ids (DescribeConfigs v3+).
TYPE_IDS = {"bool": 1, "string": 2, "int": 3, "long": 5, "list": 7}

HONOURED, ACCEPTED, READ_ONLY = "honoured", "accepted", "read-only"


@dataclass(frozen=True, slots=True)
class Spec:
    """One topic config: its type, bounds or choices, default, and what it means here."""

    name: str
    type: str  # bool | string | int | long | list
    kind: str  # HONOURED | ACCEPTED | READ_ONLY
    doc: str
    default: Callable[[BrokerConfig], str]
    low: int | None = None
    high: int | None = None
    choices: tuple[str, ...] = ()
    # The broker setting a topic without its own value follows (DescribeConfigs synonym).
    broker_name: str | None = None

    def normalize(self, value: str | None) -> str:
        """The value as stored; raises InvalidConfig."""
        if value is None:
            raise InvalidConfig(f"{self.name}: a value is required")
        v = value.strip()
        if self.type in ("int", "long"):
            try:
                n = int(v)
            except ValueError:
                raise InvalidConfig(f"{self.name}: {value!r} is not an integer") from None
            hi = self.high if self.high is not None else (INT_MAX if self.type == "int" else LONG_MAX)
            if (self.low is not None and n < self.low) or n > hi:
                raise InvalidConfig(f"{self.name}: {n} is outside [{self.low}, {hi}]")
            return str(n)
        if self.type == "bool":
            if v.lower() not in ("true", "false"):
                raise InvalidConfig(f"{self.name}: {value!r} is not true or false")
            return v.lower()
        if self.type == "list":
            items = [i.strip() for i in v.split(",") if i.strip()]
            bad = [i for i in items if self.choices and i not in self.choices]
            if bad or (not items and self.choices):
                raise InvalidConfig(f"{self.name}: {value!r}: each item must be one of "
                                    f"{', '.join(self.choices)}")
            return ",".join(dict.fromkeys(items))
        if self.choices and v not in self.choices:
            raise InvalidConfig(f"{self.name}: {value!r} must be one of {', '.join(self.choices)}")
        return v


def _const(v: str) -> Callable[[BrokerConfig], str]:
    return lambda _c: v


def _retention_ms(c: BrokerConfig) -> str:
    return str(int(c.retention_hours * 3_600_000))


_WHY_SHARED = "no effect: the CommitLog is shared by every topic and flushed by the broker's policy"

SPECS: dict[str, Spec] = {s.name: s for s in (
    Spec("cleanup.policy", "list", HONOURED,
         "delete: records older than retention.ms or beyond retention.bytes go; compact: the "
         "latest record per key is kept (docs/storage.md, Compaction)",
         _const("delete"), choices=("delete", "compact"), broker_name="log.cleanup.policy"),
    Spec("retention.ms", "long", HONOURED,
         "how long a record is kept (-1: for ever; longer than the broker's retention keeps "
         "the CommitLog segments holding the topic)",
         _retention_ms, low=-1, broker_name="log.retention.ms"),
    Spec("retention.bytes", "long", HONOURED,
         "the most record bytes a partition keeps (-1: no limit)",
         _const("-1"), low=-1, broker_name="log.retention.bytes"),
    Spec("max.message.bytes", "int", HONOURED,
         "the largest record batch a producer may append (the broker's limit caps it)",
         lambda c: str(c.max_message_size), low=0, broker_name="message.max.bytes"),
    Spec("message.timestamp.type", "string", HONOURED,
         "CreateTime: the producer's timestamps; LogAppendTime: the broker's, written into "
         "each batch on append", _const("CreateTime"), choices=("CreateTime", "LogAppendTime"),
         broker_name="log.message.timestamp.type"),
    Spec("delete.retention.ms", "long", HONOURED,
         "how long compaction keeps a tombstone (a record with a null value)",
         _const("86400000"), low=0, broker_name="log.cleaner.delete.retention.ms"),
    Spec("min.compaction.lag.ms", "long", HONOURED,
         "records younger than this are never compacted",
         _const("0"), low=0, broker_name="log.cleaner.min.compaction.lag.ms"),
    Spec("max.compaction.lag.ms", "long", ACCEPTED,
         "no effect: every pass (compaction_check_interval_s) takes every eligible record",
         _const(str(LONG_MAX)), low=1, broker_name="log.cleaner.max.compaction.lag.ms"),
    Spec("min.cleanable.dirty.ratio", "string", ACCEPTED,
         "no effect: every pass takes every eligible record", _const("0.5"),
         broker_name="log.cleaner.min.cleanable.ratio"),
    Spec("compression.type", "string", HONOURED,
         "producer: batches are stored as the producer compressed them (the only value: "
         "the broker never recompresses)", _const("producer"), choices=("producer",),
         broker_name="compression.type"),
    Spec("min.insync.replicas", "int", HONOURED,
         "one broker, one replica: 1 is the only value", _const("1"), low=1, high=1,
         broker_name="min.insync.replicas"),
    Spec("unclean.leader.election.enable", "bool", ACCEPTED,
         "no effect: one replica, no election", _const("false"),
         broker_name="unclean.leader.election.enable"),
    Spec("message.downconversion.enable", "bool", ACCEPTED,
         "no effect: old fetch versions are always down-converted", _const("true"),
         broker_name="log.message.downconversion.enable"),
    Spec("message.timestamp.difference.max.ms", "long", ACCEPTED,
         "no effect: producer timestamps are not checked", _const(str(LONG_MAX)), low=0,
         broker_name="log.message.timestamp.difference.max.ms"),
    Spec("message.timestamp.before.max.ms", "long", ACCEPTED,
         "no effect: producer timestamps are not checked", _const(str(LONG_MAX)), low=0,
         broker_name="log.message.timestamp.before.max.ms"),
    Spec("message.timestamp.after.max.ms", "long", ACCEPTED,
         "no effect: producer timestamps are not checked", _const(str(LONG_MAX)), low=0,
         broker_name="log.message.timestamp.after.max.ms"),
    Spec("flush.messages", "long", ACCEPTED, _WHY_SHARED, _const(str(LONG_MAX)), low=1,
         broker_name="log.flush.interval.messages"),
    Spec("flush.ms", "long", ACCEPTED, _WHY_SHARED, _const(str(LONG_MAX)), low=0,
         broker_name="log.flush.interval.ms"),
    Spec("preallocate", "bool", ACCEPTED, _WHY_SHARED + " (its segments are always preallocated)",
         _const("true"), broker_name="log.preallocate"),
    Spec("file.delete.delay.ms", "long", ACCEPTED, _WHY_SHARED, _const("60000"), low=0,
         broker_name="log.segment.delete.delay.ms"),
    Spec("follower.replication.throttled.replicas", "string", ACCEPTED,
         "no effect: one replica", _const(""), broker_name=None),
    Spec("leader.replication.throttled.replicas", "string", ACCEPTED,
         "no effect: one replica", _const(""), broker_name=None),
    Spec("segment.bytes", "int", READ_ONLY,
         "the CommitLog segment size, shared by every topic (the broker's segment_size)",
         lambda c: str(min(c.segment_size, INT_MAX)), broker_name="log.segment.bytes"),
    Spec("segment.ms", "long", READ_ONLY,
         "segments roll when full, shared by every topic: no time-based roll",
         _const(str(LONG_MAX)), broker_name="log.roll.ms"),
    Spec("segment.index.bytes", "int", READ_ONLY,
         "ConsumeQueue files hold cq_entries_per_file entries of 40 bytes",
         lambda c: str(min(c.cq_entries_per_file * 40, INT_MAX)),
         broker_name="log.index.size.max.bytes"),
    Spec("segment.jitter.ms", "long", READ_ONLY, "no time-based roll", _const("0"),
         broker_name="log.roll.jitter.ms"),
    Spec("index.interval.bytes", "int", READ_ONLY,
         "every record has a ConsumeQueue entry (a dense offset index)", _const("0"),
         broker_name="log.index.interval.bytes"),
    Spec("local.retention.ms", "long", READ_ONLY, "no tiered storage: retention.ms",
         _const("-2"), broker_name="log.local.retention.ms"),
    Spec("local.retention.bytes", "long", READ_ONLY, "no tiered storage: retention.bytes",
         _const("-2"), broker_name="log.local.retention.bytes"),
    Spec("remote.storage.enable", "bool", READ_ONLY, "no tiered storage", _const("false"),
         broker_name=None),
)}


def is_config_key(key: str) -> bool:
    """A key with a dot is a config name (Kafka's and RocketMQ 5's attribute names);
    one without is a free-form label."""
    return "." in key


def spec(name: str) -> Spec:
    s = SPECS.get(name)
    if s is None:
        raise InvalidConfig(f"unknown topic config {name!r}")
    return s


def _settable(name: str) -> Spec:
    s = spec(name)
    if s.kind == READ_ONLY:
        raise InvalidConfig(f"{name} is read-only here: {s.doc}")
    return s


def validate(attributes: Mapping[str, str | None], broker: BrokerConfig) -> dict[str, str]:
    """The attributes of a new topic, configs validated and normalized (labels kept
    as given). Raises InvalidConfig."""
    out: dict[str, str] = {}
    for k, v in attributes.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise InvalidConfig("topic configs are strings")
        out[k] = _settable(k).normalize(v) if is_config_key(k) else v
    _check_combination(out, broker)
    return out


def _check_combination(attrs: Mapping[str, str], broker: BrokerConfig) -> None:
    m = attrs.get("max.message.bytes")
    if m is not None and int(m) > broker.max_message_size:
        raise InvalidConfig(f"max.message.bytes {m} exceeds the broker's max_message_size "
                            f"{broker.max_message_size}")


def apply(current: Mapping[str, str], ops: Iterable[tuple[str, int, str | None]],
          broker: BrokerConfig) -> dict[str, str]:
    """Attributes after IncrementalAlterConfigs-style operations ``(name, op, value)``:
    SET replaces, DELETE goes back to the default, APPEND/SUBTRACT add or remove items
    of a list config. Labels are untouched. Raises InvalidConfig."""
    out = dict(current)
    for name, op, value in ops:
        s = _settable(name) if op != OP_DELETE else spec(name)
        if op == OP_SET:
            out[name] = s.normalize(value)
        elif op == OP_DELETE:
            out.pop(name, None)
        elif op in (OP_APPEND, OP_SUBTRACT):
            if s.type != "list":
                raise InvalidConfig(f"{name} is not a list: APPEND and SUBTRACT do not apply")
            items = (out.get(name) or s.default(broker)).split(",")
            given = s.normalize(value).split(",")
            if op == OP_APPEND:
                items += [i for i in given if i not in items]
            else:
                items = [i for i in items if i not in given]
            if not items:
                raise InvalidConfig(f"{name} cannot be empty")
            out[name] = ",".join(items)
        else:
            raise InvalidConfig(f"unknown config operation {op}")
    _check_combination(out, broker)
    return out


def replace_all(current: Mapping[str, str], configs: Mapping[str, str | None],
                broker: BrokerConfig) -> dict[str, str]:
    """AlterConfigs (the legacy, non-incremental API): the given configs replace every
    config of the topic (those not given go back to their defaults); labels stay."""
    labels = {k: v for k, v in current.items() if not is_config_key(k)}
    ops = [(k, OP_SET, v) for k, v in configs.items()]
    for k in configs:
        if not is_config_key(k):
            raise InvalidConfig(f"unknown topic config {k!r}")
    return apply(labels, ops, broker)


@dataclass(frozen=True, slots=True)
class Entry:
    """One described config."""

    name: str
    value: str
    source: int
    read_only: bool
    sensitive: bool
    type: str
    doc: str
    synonyms: tuple[tuple[str, str, int], ...]  # (name, value, source)

    @property
    def is_default(self) -> bool:
        return self.source == SOURCE_DEFAULT


def describe(attributes: Mapping[str, str], broker: BrokerConfig) -> list[Entry]:
    """Every topic config with its value and where it comes from: DYNAMIC_TOPIC_CONFIG
    when the topic sets it, else the broker's (STATIC_BROKER_CONFIG when the broker
    setting differs from Kafka's, DEFAULT_CONFIG otherwise, as ``broker_defaults``
    says), with the synonyms a Kafka broker lists (topic value, broker setting)."""
    bdefaults = {e.name: e for e in describe_broker(broker)}
    out = []
    for s in SPECS.values():
        default = s.default(broker)
        b = bdefaults.get(s.broker_name or "")
        base_source = b.source if b is not None else SOURCE_DEFAULT
        synonyms: list[tuple[str, str, int]] = []
        set_value = attributes.get(s.name)
        if set_value is not None:
            synonyms.append((s.name, set_value, SOURCE_DYNAMIC_TOPIC))
        if s.broker_name is not None:
            synonyms.append((s.broker_name, b.value if b is not None else default, base_source))
        if set_value is not None:
            out.append(Entry(s.name, set_value, SOURCE_DYNAMIC_TOPIC, False, False, s.type, s.doc,
                             tuple(synonyms)))
        else:
            out.append(Entry(s.name, default, base_source, s.kind == READ_ONLY, False, s.type,
                             s.doc, tuple(synonyms)))
    return out


def describe_broker(broker: BrokerConfig, extra: Mapping[str, str] | None = None) -> list[Entry]:
    """The broker's settings under Kafka's names (all read-only: they come from the
    broker's configuration file). STATIC_BROKER_CONFIG where FerryMQ's value differs
    from Apache Kafka's default, DEFAULT_CONFIG where it is the same."""
    values = {
        # name: (value, Kafka's default, type, doc)
        "log.retention.ms": (_retention_ms(broker), "604800000", "long",
                             "retention_hours: the CommitLog's age limit"),
        "log.retention.hours": (str(int(broker.retention_hours)), "168", "int",
                                "retention_hours"),
        "log.retention.bytes": ("-1", "-1", "long", "no per-partition limit by default"),
        "log.cleanup.policy": ("delete", "delete", "list", "the default cleanup policy"),
        "message.max.bytes": (str(broker.max_message_size), "1048588", "int",
                              "max_message_size"),
        "log.segment.bytes": (str(min(broker.segment_size, INT_MAX)), "1073741824", "int",
                              "segment_size: the CommitLog's segments"),
        "log.message.timestamp.type": ("CreateTime", "CreateTime", "string", ""),
        "num.partitions": (str(broker.default_queues), "1", "int", "default_queues"),
        "auto.create.topics.enable": (str(broker.auto_create_topics).lower(), "true", "bool",
                                      "auto_create_topics"),
        "default.replication.factor": ("1", "1", "int", "one broker"),
        "min.insync.replicas": ("1", "1", "int", "one broker"),
        "compression.type": ("producer", "producer", "string", ""),
        "log.cleaner.delete.retention.ms": ("86400000", "86400000", "long", ""),
        "log.cleaner.min.compaction.lag.ms": ("0", "0", "long", ""),
        "log.cleaner.max.compaction.lag.ms": (str(LONG_MAX), str(LONG_MAX), "long", ""),
        "log.cleaner.min.cleanable.ratio": ("0.5", "0.5", "string", ""),
        "unclean.leader.election.enable": ("false", "false", "bool", ""),
        "log.flush.interval.messages": (str(LONG_MAX), str(LONG_MAX), "long", "flush"),
        "log.flush.interval.ms": (str(broker.flush_interval_ms), str(LONG_MAX), "long",
                                  "flush_interval_ms"),
    }
    out = []
    for name, (value, kafka_default, typ, doc) in values.items():
        if extra and name in extra:
            value = extra[name]
        source = SOURCE_DEFAULT if value == kafka_default else SOURCE_STATIC_BROKER
        out.append(Entry(name, value, source, True, False, typ, doc, ((name, value, source),)))
    # What a door knows of itself (its listener, its node id): derived, not configured.
    for name, value in (extra or {}).items():
        if name not in values:
            out.append(Entry(name, value, SOURCE_DEFAULT, True, False, "string",
                             "derived from the door's settings", ((name, value, SOURCE_DEFAULT),)))
    return out


@dataclass(frozen=True, slots=True)
class Effective:
    """The settings the broker acts on, parsed (``effective``)."""

    retention_ms: int  # -1: for ever
    retention_bytes: int  # -1: no limit
    delete: bool
    compact: bool
    max_message_bytes: int
    log_append_time: bool


def effective(attributes: Mapping[str, str], broker: BrokerConfig) -> Effective:
    """A topic's honoured settings: its own where set, the broker's otherwise."""
    def get(name: str) -> str:
        v = attributes.get(name)
        return v if v is not None else SPECS[name].default(broker)
    policy = get("cleanup.policy").split(",")
    return Effective(int(get("retention.ms")), int(get("retention.bytes")), "delete" in policy,
                     "compact" in policy, int(get("max.message.bytes")),
                     get("message.timestamp.type") == "LogAppendTime")
