"""The operator's view of broker groups: ``ferrymq cluster list --etcd`` and ``cluster elect``.

``group_rows`` reads every group under the cluster's etcd prefix (state, leader and
member keys) and asks each master's remoting door for its runtime info, which
carries the replication fields (role, epoch, confirm offset, and per slave its
acked offset, lag in bytes and whether it is in sync). One row per member.

``elect`` switches a group's master on purpose (docs/cluster.md, "Switching a
master"): it checks the target is alive (a member key) and in the in-sync set,
then writes ``handover`` into the group's state key by a transaction comparing
the state key's and the leader key's mod revisions (nothing changed since the
read). The master sees it, stops acknowledging, lets the target catch up to its
end, deletes its leader key; only the target campaigns (the others defer for
two lease TTLs), wins the next epoch, and the old master follows it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import trio

from ...clients.remoting import ClientError, RemotingClient, check
from ...protocols.remoting import RequestCode, request
from ...protocols.remoting import bodies as B
from .etcd import EtcdClient, KeyValue, b64
from .view import ClusterView


class ElectError(Exception):
    """The election was refused; the message says why."""


def prefix_of(cluster_name: str, prefix: str | None) -> str:
    return (prefix or f"/ferrymq/{cluster_name}").rstrip("/")


async def _runtime(rc: RemotingClient, addr: str) -> dict[str, Any]:
    try:
        resp = check(await rc.invoke(addr, request(RequestCode.GET_BROKER_RUNTIME_INFO, 0), 3),
                     addr)
    except (ClientError, OSError):
        return {}
    table = B.loads(resp.body).get("table", {})
    return {str(k): v for k, v in table.items()}


async def group_rows(etcd: EtcdClient, prefix: str) -> list[dict[str, Any]]:
    """One row per member of every group: group, node, role, epoch, in_sync, address,
    acked offset and lag behind the master (bytes; a master: its confirm offset)."""
    view = ClusterView(prefix, "")
    kvs, _ = await etcd.range(view.prefix, prefix=True)
    view.load((kv.key, kv.value) for kv in kvs)
    rows: list[dict[str, Any]] = []
    async with RemotingClient() as rc:
        for g in view.groups.values():
            replicas: dict[str, dict[str, Any]] = {}
            confirm = None
            m = g.master_member()
            if m is not None and m.ports.get("remoting"):
                rt = await _runtime(rc, f"{m.host}:{m.ports['remoting']}")
                confirm = int(rt["commitLogConfirmOffset"]) if "commitLogConfirmOffset" in rt \
                    else None
                try:
                    replicas = {r["node"]: r for r in json.loads(rt.get("replicas", "[]"))}
                except (ValueError, TypeError, KeyError):
                    replicas = {}
            for node in sorted(set(g.members) | set(g.isr)):
                mem = g.members.get(node)
                r = replicas.get(node, {})
                master = node == g.master
                rows.append({
                    "group": g.name, "node": node,
                    "role": ("master" if master else mem.role) if mem else "down",
                    "epoch": g.epoch, "in_sync": node in g.isr,
                    "address": f"{mem.host}:{mem.ports.get('remoting', '-')}" if mem else None,
                    "acked": confirm if master else r.get("acked"),
                    "lag_bytes": 0 if master and mem else r.get("lag_bytes"),
                })
    return rows


@dataclass(frozen=True, slots=True)
class Elected:
    group: str
    old_master: str
    node: str
    epoch: int


async def elect(etcd: EtcdClient, prefix: str, group: str, node: str | None,
                timeout: float = 30.0) -> Elected:
    """Hand ``group``'s mastership to ``node`` (default: an in-sync live member other
    than the master) and wait until it is master in a later epoch."""
    base = f"{prefix}/groups/{group}/"
    kvs, _ = await etcd.range(base, prefix=True)
    by_key = {kv.key: kv for kv in kvs}
    state_kv: KeyValue | None = by_key.get(base + "state")
    leader_kv = by_key.get(base + "leader")
    if state_kv is None:
        raise ElectError(f"no group {group!r} under {prefix}")
    state = state_kv.json()
    if leader_kv is None:
        raise ElectError(f"group {group!r} has no master right now (an election is under way)")
    master = str(leader_kv.json()["node"])
    alive = {k[len(base + "members/"):] for k in by_key if k.startswith(base + "members/")}
    isr = set(state.get("isr", ()))
    if node is None:
        candidates = sorted((isr & alive) - {master})
        if not candidates:
            raise ElectError(f"no live in-sync member of {group!r} besides the master {master}")
        node = candidates[0]
    if node == master:
        raise ElectError(f"{node} is the master of {group!r} already")
    if node not in alive:
        raise ElectError(f"{node} is not a live member of {group!r}")
    if node not in isr:
        raise ElectError(f"{node} is not in sync (in-sync set: {sorted(isr)}): it may lack "
                         "acknowledged writes")
    epoch = int(state["epoch"])
    ok, _ = await etcd.txn(
        [{"key": b64(base + "state"), "target": "MOD", "mod_revision": str(state_kv.mod_revision)},
         {"key": b64(base + "leader"), "target": "MOD",
          "mod_revision": str(leader_kv.mod_revision)}],
        [{"request_put": {"key": b64(base + "state"),
                          "value": b64(json.dumps({**state, "handover": node}))}}])
    if not ok:
        raise ElectError("the group changed while asking; look again")
    with trio.move_on_after(timeout):
        while True:
            st = await etcd.get(base + "state")
            ld = await etcd.get(base + "leader")
            if st is not None and ld is not None:
                doc = st.json()
                if doc.get("master") == node and int(doc["epoch"]) > epoch \
                        and ld.json().get("node") == node:
                    return Elected(group, master, node, int(doc["epoch"]))
            await trio.sleep(0.1)
    raise ElectError(f"{node} did not become master within {timeout:.0f} s")
