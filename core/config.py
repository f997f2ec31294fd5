"""The broker's configuration: one frozen value the server builds and every core module reads.

``BrokerConfig`` lives apart from ``core/broker.py`` so that the services the
Broker owns (timers, transactions, retry, pop) can take it without importing
the Broker (no import cycles in the core: tests/test_architecture.py). The
server builds it from defaults < TOML < environment < flags (gateways/config.py);
docs/operations.md lists every setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .metadata import MAX_QUEUES
from .store.filecache import MIN_BUDGET as MIN_OPEN_FILES

# RocketMQ's messageDelayLevel default: "1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h".
DELAY_LEVELS_MS = tuple(s * 1000 for s in (1, 5, 10, 30, 60, 120, 180, 240, 300, 360, 420,
                                            480, 540, 600, 1200, 1800, 3600, 7200))
MAX_DELAY_LEVEL = len(DELAY_LEVELS_MS)
_LEVEL_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_delay_levels(text: str) -> tuple[int, ...]:
    """RocketMQ's ``messageDelayLevel`` form (``"1s 5s 10s ... 2h"``; units ms, s, m, h,
    d) as milliseconds. Exactly ``MAX_DELAY_LEVEL`` (18) positive durations: the
    levels are part of the protocol (DELAY, and retries at level 3 + reconsume
    count), so only their lengths may change. Raises ValueError."""
    out = []
    for item in text.split():
        num = item.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = _LEVEL_UNITS_MS.get(item[len(num):])
        if unit is None or not num.isdigit() or int(num) <= 0:
            raise ValueError(f"delay level {item!r}: a positive integer and one of ms, s, m, h, d")
        out.append(int(num) * unit)
    if len(out) != MAX_DELAY_LEVEL:
        raise ValueError(f"delay_levels needs {MAX_DELAY_LEVEL} durations, not {len(out)}")
    return tuple(out)


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Everything the core needs; the server builds it from TOML, environment and flags."""

    data_dir: str = "./ferrymq-data"
    flush: str = "async"  # "async": fsync every flush_interval_ms; "sync": ack after fsync
    flush_interval_ms: int = 500
    segment_size: int = 1 << 30
    cq_entries_per_file: int = 300_000
    index_slots: int = 500_000
    index_entries: int = 2_000_000
    max_open_files: int = 0  # store files held open at once (docs/storage.md); 0: automatic
    retention_hours: float = 72.0
    # Disk pressure (docs/operations.md, "Disk"): above max_disk_ratio of the file system
    # producers' writes are refused (disk_full_policy "refuse") or the oldest segments
    # deleted first ("delete_oldest", RocketMQ's way); writes resume below
    # disk_resume_ratio (0: max_disk_ratio - 0.05). Checked every disk_check_interval_s.
    max_disk_ratio: float = 0.75  # RocketMQ's diskMaxUsedSpaceRatio
    disk_resume_ratio: float = 0.0
    disk_full_policy: str = "refuse"
    disk_check_interval_s: float = 1.0
    retention_check_interval_s: float = 10.0
    # Compacted topics: a compaction pass every this many seconds (docs/storage.md).
    compaction_check_interval_s: float = 15.0
    checkpoint_interval_ms: int = 1000
    # Unused since round 2 (offsets are state-log records, durable when committed);
    # accepted so that round-1 configuration files still load.
    offset_persist_interval_ms: int = 1000
    # The state log's compaction (docs/storage.md "The state log"): a snapshot every
    # this many state records (at least as many as the state holds), or every
    # interval when anything changed.
    state_snapshot_records: int = 100_000
    state_snapshot_interval_s: float = 60.0
    max_message_size: int = 4 << 20
    auto_create_topics: bool = True
    auto_create_groups: bool = True
    default_queues: int = 4
    broker_name: str = "broker-a"
    cluster_name: str = "DefaultCluster"
    store_host: str = "127.0.0.1"
    store_port: int = 10911
    # Timers, transactions, retry (docs/timers.md, docs/transactions.md).
    timer_max_delay_ms: int = 365 * 86_400_000  # a later delivery time is refused (InvalidDelay)
    roll_window_s: int = 86_400  # timers and open halves older than this are appended again
    timer_wheel_slots: int = 1 << 22  # seconds in the ring (48.5 days)
    timer_log_segment_entries: int = 1 << 20
    timer_prepare_limit: int = 200_000  # deliveries built ahead of time, at most (soft)
    # RocketMQ's messageDelayLevel: the lengths of the 18 DELAY levels (retries use them too).
    delay_levels: str = "1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h"
    transaction_check_timeout_ms: int = 6_000  # RocketMQ transactionTimeOut
    transaction_check_interval_ms: int = 60_000  # RocketMQ transactionCheckInterval
    transaction_check_max: int = 15  # RocketMQ transactionCheckMax
    # Broker groups (docs/cluster.md); only read when the server runs a [cluster].
    replication_mode: str = "sync"  # "sync": writes wait for the in-sync set; "async": not
    min_insync_replicas: int = 1  # REPLICATED writes are refused below this many in-sync members
    replica_lag_max_ms: int = 5_000  # an in-sync member not caught up this long leaves the set
    replication_timeout_ms: int = 5_000  # a REPLICATED write waits at most this long
    slave_read_enable: bool = False  # a slave serves reads (RocketMQ's slaveReadEnable)
    extra: Mapping[str, object] = field(default_factory=dict)

    @property
    def resume_ratio(self) -> float:
        """The low watermark: writes refused for disk pressure resume below it."""
        return self.disk_resume_ratio or max(0.0, self.max_disk_ratio - 0.05)

    def __post_init__(self) -> None:
        if self.flush not in ("async", "sync"):
            raise ValueError("flush must be 'async' or 'sync'")
        if self.segment_size < self.max_message_size + 64 * 1024:
            raise ValueError("segment_size must exceed max_message_size by at least 64 KiB")
        if self.max_open_files and self.max_open_files < MIN_OPEN_FILES:
            raise ValueError(f"max_open_files must be 0 (automatic) or at least {MIN_OPEN_FILES}")
        if not 1 <= self.default_queues <= MAX_QUEUES:
            raise ValueError(f"default_queues must be 1..{MAX_QUEUES}")
        if self.timer_wheel_slots < 1024 or self.timer_wheel_slots & (self.timer_wheel_slots - 1):
            raise ValueError("timer_wheel_slots must be a power of two, at least 1024")
        if not 60 <= self.roll_window_s < self.timer_wheel_slots // 2:
            raise ValueError("roll_window_s must be at least 60 and under half the wheel")
        parse_delay_levels(self.delay_levels)  # raises ValueError
        if self.disk_full_policy not in ("refuse", "delete_oldest"):
            raise ValueError("disk_full_policy must be 'refuse' or 'delete_oldest'")
        if self.max_disk_ratio <= 0 or not 0 <= self.disk_resume_ratio < self.max_disk_ratio \
                or self.disk_check_interval_s <= 0:
            raise ValueError("max_disk_ratio must be positive, disk_resume_ratio below it, "
                             "disk_check_interval_s positive")
        if self.state_snapshot_records < 1 or self.state_snapshot_interval_s <= 0:
            raise ValueError("state_snapshot_records and state_snapshot_interval_s must be positive")
        if self.replication_mode not in ("sync", "async"):
            raise ValueError("replication_mode must be 'sync' or 'async'")
        if self.min_insync_replicas < 1 or self.replica_lag_max_ms < 1 \
                or self.replication_timeout_ms < 1:
            raise ValueError("min_insync_replicas, replica_lag_max_ms and replication_timeout_ms "
                             "must be positive")
        if self.timer_max_delay_ms < 0 or self.transaction_check_max < 0 \
                or self.transaction_check_timeout_ms < 0 or self.transaction_check_interval_ms < 1:
            raise ValueError("timer and transaction settings must not be negative")
