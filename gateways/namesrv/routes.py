"""The NameServer's route table (RocketMQ RouteInfoManager): brokers, their clusters and topics.

Brokers register every 30 s with their topic table; a broker not heard from
for ``broker_expiry_s`` (RocketMQ: 120 s) leaves every route, as does one that
unregisters. A topic's route lists every live broker holding it and how
many queues each has, so one topic's queues can be spread over several
brokers and clients send to and pull from all of them. Pure bookkeeping: no
I/O, the clock is passed in.

Broker groups (docs/cluster.md, "Clients follow the master"): a group's master
registers as brokerId 0 and its slaves under ids of their own, all with one
broker name. A registration as brokerId 0 is the group's new master: any other
address still listed as that name's brokerId 0 (a master that died without
unregistering, whose entry would otherwise live until the expiry) leaves the
table at once, so routes name one master per broker name, the newest. Were
the displaced one still alive, it re-registers in its new role within its
next life (a role change restarts the doors, which register at start). A
member of a group sends its epoch (the ``ferryEpoch`` field, which RocketMQ's
NameServers ignore); a master claim of an older epoch than the listed
master's — a master cut off from etcd whose 30 s re-registration comes before
its demotion — is not recorded, so it cannot take the route back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ...protocols.remoting import bodies as B

BROKER_EXPIRY_S = 120.0  # RocketMQ RouteInfoManager.DEFAULT_BROKER_CHANNEL_EXPIRED_TIME


@dataclass
class BrokerLive:
    cluster: str
    broker_name: str
    broker_id: int
    addr: str
    last_update: float
    topics: dict[str, B.TopicConfigData] = field(default_factory=dict)
    data_version: int = 0
    epoch: int = 0  # a broker group's master epoch (0: a single broker)


class RouteTable:
    def __init__(self, broker_expiry_s: float = BROKER_EXPIRY_S) -> None:
        self.broker_expiry_s = broker_expiry_s
        self.brokers: dict[str, BrokerLive] = {}  # broker address -> live entry

    def register(self, cluster: str, broker_name: str, broker_id: int, addr: str,
                 topics: tuple[B.TopicConfigData, ...], data_version: int = 0,
                 now: float | None = None, epoch: int = 0) -> bool:
        """Record a registration; False when it is a master claim of an older epoch than
        the master listed for that broker name (a master whose term is over, not yet
        restarted as a slave): it is not recorded (see above)."""
        now = time.monotonic() if now is None else now
        if broker_id == 0:  # a group's new master displaces the old one (see above)
            others = [(a, b) for a, b in self.brokers.items() if a != addr and b.broker_id == 0
                      and b.broker_name == broker_name and b.cluster == cluster]
            if any(b.epoch > epoch for _, b in others):
                return False
            for a, _ in others:
                del self.brokers[a]
        # An address re-registering under another name replaces its old entry.
        self.brokers[addr] = BrokerLive(cluster, broker_name, broker_id, addr, now,
                                        {t.topicName: t for t in topics}, data_version, epoch)
        return True

    def unregister(self, addr: str, broker_name: str | None = None,
                   broker_id: int | None = None) -> bool:
        """Drop the broker at ``addr``, only while it is registered there as
        ``broker_name`` / ``broker_id`` (when given): the unregistration a broker's
        ended life sends on its way out (a slave that became master at the same
        address) can arrive after the new life's registration, and must not remove it."""
        b = self.brokers.get(addr)
        if b is None or (broker_name is not None and b.broker_name != broker_name) \
                or (broker_id is not None and b.broker_id != broker_id):
            return False
        del self.brokers[addr]
        return True

    def expire(self, now: float | None = None) -> list[str]:
        """Drop brokers silent for longer than the expiry; returns their addresses."""
        now = time.monotonic() if now is None else now
        gone = [a for a, b in self.brokers.items() if now - b.last_update > self.broker_expiry_s]
        for a in gone:
            del self.brokers[a]
        return gone

    def _broker_datas(self, names: set[str]) -> list[B.BrokerData]:
        by_name: dict[str, B.BrokerData] = {}
        for b in self.brokers.values():
            if b.broker_name in names:
                old = by_name.get(b.broker_name)
                addrs = dict(old.brokerAddrs) if old else {}
                addrs[b.broker_id] = b.addr
                by_name[b.broker_name] = B.BrokerData(b.cluster, b.broker_name, addrs)
        return [by_name[n] for n in sorted(by_name)]

    def route(self, topic: str) -> B.TopicRouteData | None:
        queues = []
        names = set()
        for b in sorted(self.brokers.values(), key=lambda b: (b.broker_name, b.broker_id)):
            t = b.topics.get(topic)
            if t is None or b.broker_id != 0:
                continue
            queues.append(B.QueueData(b.broker_name, t.readQueueNums, t.writeQueueNums, t.perm,
                                      t.topicSysFlag))
            names.add(b.broker_name)
        if not queues:
            return None
        order = None
        if any(b.topics[topic].order for b in self.brokers.values() if topic in b.topics):
            order = ";".join(f"{q.brokerName}:{q.writeQueueNums}" for q in queues)
        return B.TopicRouteData(tuple(queues), tuple(self._broker_datas(names)), order)

    def cluster_info(self) -> B.ClusterInfo:
        names = {b.broker_name for b in self.brokers.values()}
        clusters: dict[str, set[str]] = {}
        for b in self.brokers.values():
            clusters.setdefault(b.cluster, set()).add(b.broker_name)
        return B.ClusterInfo({bd.brokerName: bd for bd in self._broker_datas(names)},
                             {c: tuple(sorted(n)) for c, n in clusters.items()})

    def topics(self, cluster: str | None = None) -> list[str]:
        out: set[str] = set()
        for b in self.brokers.values():
            if cluster is None or b.cluster == cluster:
                out.update(b.topics)
        return sorted(out)

    def delete_topic(self, topic: str) -> None:
        for b in self.brokers.values():
            b.topics.pop(topic, None)
