"""A life of the core that begins after the node's etcd lease expired (a machine too busy
to keep it alive while the core restarted) ends the term; it does not end the process.

Found by the failover test on a loaded machine: the member key's put at the start of a
life answered "requested lease not found", the error escaped the controller and the
broker exited with 1."""

from __future__ import annotations

from pathlib import Path

import trio
from ferrymq.gateways.config import load_config
from ferrymq.gateways.replication.controller import Controller
from ferrymq.gateways.replication.etcd import EtcdClient


def controller(tmp_path: Path, etcd_url: str) -> Controller:
    path = tmp_path / "n.toml"
    path.write_text(f'broker_name = "g1"\ncluster_name = "lease-{tmp_path.name}"\n'
                    f'[cluster]\netcd = "{etcd_url}"\nnode_id = "a"\n'
                    'replication_listen = "127.0.0.1:0"\nlease_ttl_s = 4\n')
    return Controller(load_config(str(path), env={}))


async def test_a_member_key_under_an_expired_lease_ends_the_term(etcd, tmp_path) -> None:
    c = controller(tmp_path, etcd.url)
    c.lease, _ttl = await c.etcd.grant(2)
    await c.etcd.revoke(c.lease)  # as if it had expired
    async with trio.open_nursery() as n:
        await c._publish_member_in_life(n)
    assert c.lease_lost.is_set()


async def test_a_member_key_etcd_cannot_take_now_is_published_later(etcd, tmp_path) -> None:
    c = controller(tmp_path, etcd.url)
    c.lease, _ttl = await c.etcd.grant(5)
    good = c.etcd
    c.etcd = EtcdClient(["http://127.0.0.1:1"], 0.2)  # etcd unreachable for a moment
    async with trio.open_nursery() as n:
        await c._publish_member_in_life(n)
        assert not c.lease_lost.is_set()
        c.etcd = good  # back: the background retry publishes the key
        with trio.fail_after(10):
            while await good.get(c.keys.member(c.node)) is None:
                await trio.sleep(0.05)
    assert not c.lease_lost.is_set()
    await good.revoke(c.lease)
