"""The Kafka door's admin contract on the wire: the APIs a one-broker cluster answers
honestly, commit metadata, num.partitions, topic ids, and group membership across a
restart."""

from __future__ import annotations

from typing import Any

from ferrymq.core.access import SYSTEM
from ferrymq.core.broker import Broker
from ferrymq.protocols.kafka import errors as ke
from ferrymq.protocols.kafka import records as kr
from kafka_wire import Client, Req, create, fetch, produce, run, with_door

METADATA, OFFSET_COMMIT, OFFSET_FETCH, FIND_COORDINATOR = 3, 8, 9, 10
JOIN_GROUP, HEARTBEAT, SYNC_GROUP, DELETE_RECORDS, OFFSET_FOR_LEADER_EPOCH = 11, 12, 14, 21, 23
DESCRIBE_LOG_DIRS, ELECT_LEADERS, ALTER_REASSIGN, LIST_REASSIGN = 35, 43, 45, 46
OFFSET_DELETE, DESCRIBE_CLUSTER, DESCRIBE_PRODUCERS, DESCRIBE_TOPIC_PARTITIONS = 47, 60, 61, 75
FETCH = 1


def commit(c: Client, group: str, topic: str, offset: int, metadata: str | None,
           generation: int = -1, member: str = "", version: int = 8) -> int:
    R = Req(OFFSET_COMMIT)
    resp = c.call(OFFSET_COMMIT, version, R(
        group_id=group, generation_id_or_member_epoch=generation, member_id=member,
        topics=(R.OffsetCommitRequestTopic(name=topic, partitions=(
            R.OffsetCommitRequestPartition(partition_index=0, committed_offset=offset,
                                           committed_leader_epoch=3,
                                           committed_metadata=metadata),)),)))
    return resp.topics[0].partitions[0].error_code


def fetched(c: Client, group: str, topic: str, version: int = 8) -> Any:
    R = Req(OFFSET_FETCH)
    if version >= 8:
        resp = c.call(OFFSET_FETCH, version, R(groups=(R.OffsetFetchRequestGroup(
            group_id=group, topics=(R.OffsetFetchRequestTopics(name=topic,
                                                               partition_indexes=(0,)),)),)))
        return resp.groups[0].topics[0].partitions[0]
    resp = c.call(OFFSET_FETCH, version, R(group_id=group, topics=(
        R.OffsetFetchRequestTopic(name=topic, partition_indexes=(0,)),)))
    return resp.topics[0].partitions[0]


async def test_commit_metadata_comes_back_in_offset_fetch(tmp_path) -> None:
    """Finding: OffsetCommit's metadata string was dropped (OffsetFetch answered "")."""
    async def body(broker: Broker, bootstrap: str) -> None:
        c = Client(bootstrap)
        await run(create, c, "cm")
        assert await run(commit, c, "g", "cm", 5, "checkpoint-5") == ke.NONE
        for version in (1, 7, 8):
            p = await run(fetched, c, "g", "cm", version)
            assert (p.committed_offset, p.metadata) == (5, "checkpoint-5"), version
        assert (await run(fetched, c, "g", "cm", 8)).committed_leader_epoch == 3
        # Another door moves the offset: the metadata was the old offset's.
        broker.commit_offset("g", "cm", 0, 9, principal=SYSTEM)
        p = await run(fetched, c, "g", "cm", 8)
        assert (p.committed_offset, p.metadata, p.committed_leader_epoch) == (9, "", -1)
        c.close()
    await with_door(tmp_path, body)


async def test_topics_the_door_creates_get_num_partitions(tmp_path) -> None:
    """Finding: a topic auto-created through the Kafka door got the broker's 4 queues where
    Kafka users expect num.partitions (1)."""
    def partitions(c: Client, topic: str) -> int:
        R = Req(METADATA)
        resp = c.call(METADATA, 9, R(topics=(R.MetadataRequestTopic(name=topic),),
                                     allow_auto_topic_creation=True))
        return len(resp.topics[0].partitions)

    async def default(broker: Broker, bootstrap: str) -> None:
        c = Client(bootstrap)
        assert await run(partitions, c, "auto-one") == 1
        assert (await run(produce, c, "auto-two", kr.encode_batch(0, [(1, None, b"x", [])]))
                ).error_code == 0
        assert broker.topic("auto-two", principal=SYSTEM).queues == 1
        R = Req(19)
        resp = await run(c.call, 19, 5, R(topics=(R.CreatableTopic(
            name="made", num_partitions=-1, replication_factor=-1),), timeout_ms=1000))
        assert (resp.topics[0].error_code, resp.topics[0].num_partitions) == (0, 1)
        c.close()

    async def three(broker: Broker, bootstrap: str) -> None:
        c = Client(bootstrap)
        assert await run(partitions, c, "auto-three") == 3
        c.close()
    await with_door(tmp_path / "a", default)
    await with_door(tmp_path / "b", three, {"num_partitions": 3})


async def test_topic_ids_name_a_topic_in_metadata_and_fetch(tmp_path) -> None:
    async def body(broker: Broker, bootstrap: str) -> None:
        c = Client(bootstrap)
        await run(create, c, "ids")
        await run(produce, c, "ids", kr.encode_batch(0, [(1, None, b"by-id", [])]))
        R = Req(METADATA)
        meta = await run(c.call, METADATA, 12, R(topics=(R.MetadataRequestTopic(name="ids"),)))
        tid = meta.topics[0].topic_id
        assert tid != bytes(16)
        again = await run(c.call, METADATA, 12, R(topics=(R.MetadataRequestTopic(
            name=None, topic_id=tid),)))
        assert again.topics[0].name == "ids"
        F = Req(FETCH)
        resp = await run(c.call, FETCH, 16, F(max_wait_ms=0, min_bytes=1, max_bytes=1 << 20,
                                              topics=(F.FetchTopic(topic_id=tid, partitions=(
                                                  F.FetchPartition(partition=0, fetch_offset=0,
                                                                   partition_max_bytes=1 << 20),
                                              )),)))
        assert resp.responses[0].topic_id == tid
        [rec] = kr.iter_records(bytes(resp.responses[0].partitions[0].records))
        assert rec.value == b"by-id"
        bad = await run(c.call, FETCH, 16, F(max_wait_ms=0, topics=(F.FetchTopic(
            topic_id=b"\x01" * 16, partitions=(F.FetchPartition(partition=0),)),)))
        assert bad.responses[0].partitions[0].error_code == ke.UNKNOWN_TOPIC_ID
        c.close()
    await with_door(tmp_path, body)


async def test_one_broker_answers_the_cluster_apis_honestly(tmp_path) -> None:
    """Finding: DeleteRecords, OffsetDelete, DescribeLogDirs, DescribeTopicPartitions,
    DescribeCluster, ElectLeaders and the reassignment APIs were missing."""
    async def body(broker: Broker, bootstrap: str) -> None:
        c = Client(bootstrap)
        await run(create, c, "adm")
        for i in range(3):
            await run(produce, c, "adm", kr.encode_batch(0, [(1, None, b"r%d" % i, [])]))
        # DeleteRecords: Kafka clients see the log start move.
        D = Req(DELETE_RECORDS)
        resp = await run(c.call, DELETE_RECORDS, 2, D(timeout_ms=1000, topics=(
            D.DeleteRecordsTopic(name="adm", partitions=(
                D.DeleteRecordsPartition(partition_index=0, offset=2),)),)))
        p = resp.topics[0].partitions[0]
        assert (p.error_code, p.low_watermark) == (0, 2)
        assert (await run(fetch, c, "adm", 1)).error_code == ke.OFFSET_OUT_OF_RANGE
        f = await run(fetch, c, "adm", 2)
        assert f.log_start_offset == 2 and [r.value for r in kr.iter_records(
            bytes(f.records))] == [b"r2"]
        resp = await run(c.call, DELETE_RECORDS, 0, D(timeout_ms=1, topics=(
            D.DeleteRecordsTopic(name="adm", partitions=(
                D.DeleteRecordsPartition(partition_index=0, offset=99),)),)))
        assert resp.topics[0].partitions[0].error_code == ke.OFFSET_OUT_OF_RANGE
        # OffsetDelete.
        assert await run(commit, c, "od", "adm", 1, None) == 0
        OD = Req(OFFSET_DELETE)
        resp = await run(c.call, OFFSET_DELETE, 0, OD(group_id="od", topics=(
            OD.OffsetDeleteRequestTopic(name="adm", partitions=(
                OD.OffsetDeleteRequestPartition(partition_index=0),)),)))
        assert (resp.error_code, resp.topics[0].partitions[0].error_code) == (0, 0)
        assert broker.committed_offset("od", "adm", 0, principal=SYSTEM) is None
        assert (await run(c.call, OFFSET_DELETE, 0, OD(group_id="nobody", topics=()))
                ).error_code == ke.GROUP_ID_NOT_FOUND
        # DescribeLogDirs: one directory, every partition in it.
        L = Req(DESCRIBE_LOG_DIRS)
        dirs = await run(c.call, DESCRIBE_LOG_DIRS, 4, L(topics=None))
        [d] = dirs.results
        assert d.total_bytes > 0 and "adm" in {t.name for t in d.topics}
        M = Req(34)
        moved = await run(c.call, 34, 2, M(dirs=(
            M.AlterReplicaLogDir(path=d.log_dir, topics=(
                M.AlterReplicaLogDirTopic(name="adm", partitions=(0,)),)),
            M.AlterReplicaLogDir(path="/elsewhere", topics=(
                M.AlterReplicaLogDirTopic(name="adm", partitions=(0,)),)))))
        assert [p.error_code for r in moved.results for p in r.partitions] == \
            [ke.NONE, ke.LOG_DIR_NOT_FOUND]
        # DescribeCluster and DescribeTopicPartitions.
        K = Req(DESCRIBE_CLUSTER)
        cl = await run(c.call, DESCRIBE_CLUSTER, 1, K(endpoint_type=1))
        assert (cl.error_code, cl.controller_id, len(cl.brokers)) == (0, 0, 1)
        T = Req(DESCRIBE_TOPIC_PARTITIONS)
        tp = await run(c.call, DESCRIBE_TOPIC_PARTITIONS, 0, T(
            topics=(T.TopicRequest(name="adm"), T.TopicRequest(name="none")),
            response_partition_limit=10))
        by = {t.name: t for t in tp.topics}
        assert by["adm"].partitions[0].leader_id == 0 and by["adm"].topic_id != bytes(16)
        assert by["none"].error_code == ke.UNKNOWN_TOPIC_OR_PARTITION
        # Elections and reassignments: nothing to elect, one broker to assign to.
        E = Req(ELECT_LEADERS)
        el = await run(c.call, ELECT_LEADERS, 2, E(election_type=0, timeout_ms=1000,
                                                   topic_partitions=(E.TopicPartitions(
                                                       topic="adm", partitions=(0, 7)),)))
        assert [r.error_code for r in el.replica_election_results[0].partition_result] == \
            [ke.ELECTION_NOT_NEEDED, ke.UNKNOWN_TOPIC_OR_PARTITION]
        A = Req(ALTER_REASSIGN)
        ar = await run(c.call, ALTER_REASSIGN, 0, A(timeout_ms=1000, topics=(
            A.ReassignableTopic(name="adm", partitions=(
                A.ReassignablePartition(partition_index=0, replicas=(0,)),
                A.ReassignablePartition(partition_index=0, replicas=(0, 5)),
                A.ReassignablePartition(partition_index=0, replicas=None))),)))
        assert [p.error_code for p in ar.responses[0].partitions] == \
            [0, ke.INVALID_REPLICA_ASSIGNMENT, ke.NO_REASSIGNMENT_IN_PROGRESS]
        lr = await run(c.call, LIST_REASSIGN, 0, Req(LIST_REASSIGN)(timeout_ms=1000,
                                                                    topics=None))
        assert (lr.error_code, lr.topics) == (0, ())
        # OffsetForLeaderEpoch: epoch 0 ends at the high watermark.
        Q = Req(OFFSET_FOR_LEADER_EPOCH)
        ep = await run(c.call, OFFSET_FOR_LEADER_EPOCH, 4, Q(replica_id=-1, topics=(
            Q.OffsetForLeaderTopic(topic="adm", partitions=(
                Q.OffsetForLeaderPartition(partition=0, current_leader_epoch=0,
                                           leader_epoch=0),)),)))
        p = ep.topics[0].partitions[0]
        assert (p.error_code, p.leader_epoch, p.end_offset) == (0, 0, 3)
        # FindCoordinator v4 for groups and transactional ids at once.
        C = Req(FIND_COORDINATOR)
        fc = await run(c.call, FIND_COORDINATOR, 4, C(key_type=1, coordinator_keys=("t1", "t2")))
        assert [(x.key, x.error_code, x.node_id) for x in fc.coordinators] == \
            [("t1", 0, 0), ("t2", 0, 0)]
        c.close()
    await with_door(tmp_path, body)


def join_and_sync(c: Client, group: str) -> tuple[str, int]:
    J, S = Req(JOIN_GROUP), Req(SYNC_GROUP)
    protos = (J.JoinGroupRequestProtocol(name="range", metadata=b"\x00\x01"),)

    def join(member: str) -> Any:
        return c.call(JOIN_GROUP, 5, J(group_id=group, session_timeout_ms=10_000,
                                       rebalance_timeout_ms=10_000, member_id=member,
                                       protocol_type="consumer", protocols=protos))
    first = join("")
    assert first.error_code == ke.MEMBER_ID_REQUIRED
    joined = join(first.member_id)
    assert joined.error_code == 0
    synced = c.call(SYNC_GROUP, 3, S(group_id=group, generation_id=joined.generation_id,
                                     member_id=joined.member_id, assignments=(
                                         S.SyncGroupRequestAssignment(
                                             member_id=joined.member_id, assignment=b"mine"),)))
    assert (synced.error_code, synced.assignment) == (0, b"mine")
    return joined.member_id, joined.generation_id


def heartbeat(c: Client, group: str, member: str, generation: int) -> int:
    return c.call(HEARTBEAT, 3, Req(HEARTBEAT)(group_id=group, generation_id=generation,
                                               member_id=member)).error_code


async def test_group_members_are_kept_across_a_clean_restart(tmp_path) -> None:
    """Finding: after a clean restart every member got UNKNOWN_MEMBER_ID once."""
    member: dict[str, Any] = {}

    async def before(broker: Broker, bootstrap: str) -> None:
        c = Client(bootstrap)
        await run(create, c, "gt")
        member["id"], member["gen"] = await run(join_and_sync, c, "kept")
        c.close()

    async def after(broker: Broker, bootstrap: str) -> None:
        c = Client(bootstrap)
        assert await run(heartbeat, c, "kept", member["id"], member["gen"]) == ke.NONE
        assert await run(commit, c, "kept", "gt", 1, None, member["gen"], member["id"]) == 0
        S = Req(SYNC_GROUP)
        again = await run(c.call, SYNC_GROUP, 3, S(group_id="kept",
                                                    generation_id=member["gen"],
                                                    member_id=member["id"]))
        assert (again.error_code, again.assignment) == (0, b"mine")
        c.close()
    await with_door(tmp_path, before)
    await with_door(tmp_path, after)
