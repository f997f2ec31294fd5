"""The operator's view (docs/cluster.md, "Operating a group"): ``ferrymq cluster list --etcd``
shows groups, members, roles, epochs, the in-sync set and replication lag; ``ferrymq
cluster elect`` switches a master on purpose and refuses a member that is not in sync.
Real etcd and broker processes; the CLI runs as a process, as an operator runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import trio
from ferrymq.clients.remoting import RemotingClient
from ferrymq.gateways.replication.etcd import EtcdClient
from ferrymq.protocols.remoting import ResponseCode
from harness import Group, Node, read_queue, send_request


async def start_pair(g: Group) -> tuple[Node, Node]:
    a = await g.node("a").start()
    await a.wait_role("master")
    b = await g.node("b").start()
    await b.wait_role("slave")
    await g.wait_isr({"a", "b"})
    return a, b


async def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return await trio.to_thread.run_sync(lambda: subprocess.run(
        [sys.executable, "-m", "ferrymq.gateways", "cluster", *args],
        capture_output=True, text=True, timeout=60))


async def test_cluster_list_shows_roles_epochs_in_sync_set_and_lag(make_group) -> None:
    g: Group = make_group()
    a, _b = await start_pair(g)
    async with RemotingClient() as rc:
        for i in range(20):
            assert (await rc.invoke(a.remoting, send_request("L", b"x" * 100, i % 2))).code == 0
    etcd = ("--etcd", g.etcd.url, "-c", g.cluster_name)
    with trio.fail_after(20):
        while True:
            out = await cli("list", *etcd, "--json")
            assert out.returncode == 0, out.stderr
            rows = {r["node"]: r for r in map(json.loads, out.stdout.splitlines())}
            if rows["b"]["lag_bytes"] == 0 and rows["b"]["acked"] == rows["a"]["acked"]:
                break
            await trio.sleep(0.1)
    assert rows["a"] | {"address": None} == {
        "group": "g1", "node": "a", "role": "master", "epoch": 1, "in_sync": True,
        "address": None, "acked": rows["a"]["acked"], "lag_bytes": 0}
    assert rows["b"]["role"] == "slave" and rows["b"]["in_sync"] is True
    assert isinstance(rows["a"]["acked"], int) and rows["a"]["acked"] > 20 * 100
    assert rows["a"]["address"] == a.remoting
    # Without --etcd, the NameServer view is as before (a broker's address works too).
    out = await cli("list", "-n", a.remoting, "-o", "json")
    assert out.returncode == 0 and json.loads(out.stdout.splitlines()[0])["broker"] == "g1"


async def test_cluster_elect_hands_the_mastership_to_an_in_sync_member(make_group) -> None:
    g: Group = make_group()
    a, b = await start_pair(g)
    etcd = ("--etcd", g.etcd.url, "-c", g.cluster_name)
    # A live member outside the in-sync set is refused (a member key of its own lease).
    client = EtcdClient([g.etcd.url])
    lease, _ = await client.grant(30)
    await client.put(f"/ferrymq/{g.cluster_name}/groups/g1/members/ghost",
                     json.dumps({"node": "ghost", "host": "127.0.0.1", "ports": {}}), lease)
    out = await cli("elect", "g1", "--node", "ghost", *etcd)
    assert out.returncode != 0 and "not in sync" in out.stderr, out.stderr
    out = await cli("elect", "g1", "--node", "a", *etcd)
    assert out.returncode != 0 and "master of 'g1' already" in out.stderr, out.stderr
    await client.revoke(lease)

    async with RemotingClient() as rc:
        acked = []
        for i in range(50):
            r = await rc.invoke(a.remoting, send_request("E", f"m{i}".encode(), 0))
            assert r.code == ResponseCode.SUCCESS
            acked.append(f"m{i}".encode())
        life_a, life_b = a.info()["life"], b.info()["life"]
        out = await cli("elect", "g1", *etcd, "-o", "json")
        assert out.returncode == 0, out.stderr
        done = json.loads(out.stdout)
        assert (done["old_master"], done["master"], done["epoch"]) == ("a", "b", 2)
        await b.wait_role("master", life_after=life_b)
        await a.wait_role("slave", life_after=life_a)  # stepped down, follows b
        await g.wait_isr({"a", "b"})
        assert [body for _, body in await read_queue(rc, b.remoting, "E", 0)] == acked
        assert (await rc.invoke(b.remoting, send_request("E", b"after", 0))).code == 0
        refused = await rc.invoke(a.remoting, send_request("E", b"to the old", 0))
        assert refused.code == ResponseCode.SERVICE_NOT_AVAILABLE
