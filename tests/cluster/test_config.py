"""The [cluster] table: what makes a broker a group member, and what it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
from ferrymq.gateways.config import ConfigError, load_config


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return str(path)


def test_without_a_cluster_table_the_broker_stands_alone(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, 'broker_name = "b"\n'), env={}).cluster is None


def test_the_cluster_table_sets_the_member_and_the_cores_replication_settings(
        tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, """
broker_name = "broker-a"
[cluster]
etcd = "http://127.0.0.1:2379, http://127.0.0.2:2379"
node_id = "a1"
replication_listen = "0.0.0.0:10912"
replication_mode = "async"
min_insync_replicas = 2
slave_read_enable = true
lease_ttl_s = 4
"""), env={})
    assert cfg.cluster is not None
    assert cfg.cluster.etcd == ("http://127.0.0.1:2379", "http://127.0.0.2:2379")
    assert cfg.cluster.node_id == "a1" and cfg.cluster.lease_ttl_s == 4
    assert cfg.cluster.replication_address == ("0.0.0.0", 10912)
    b = cfg.broker
    assert (b.replication_mode, b.min_insync_replicas, b.slave_read_enable) == ("async", 2, True)


@pytest.mark.parametrize(("table", "complaint"), [
    ('node_id = "a"', "etcd"),
    ('etcd = "http://h:1"', "node_id"),
    ('etcd = "http://h:1"\nnode_id = "a"\nbogus = 1', "bogus"),
    ('etcd = "http://h:1"\nnode_id = "a"\nlease_ttl_s = 1', "lease_ttl_s"),
    ('etcd = "http://h:1"\nnode_id = "a"\nfence_margin_ms = 5000', "fence_margin_ms"),
    ('etcd = "http://h:1"\nnode_id = "a"\nreplication_listen = "nope"', "replication_listen"),
    ('etcd = "http://h:1"\nnode_id = "a/b"', "node_id"),
    ('etcd = "http://h:1"\nnode_id = "a"\nreplication_mode = "maybe"', "replication_mode"),
])
def test_a_bad_cluster_table_is_refused_with_the_setting_named(
        tmp_path: Path, table: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        load_config(write(tmp_path, "[cluster]\n" + table + "\n"), env={})
