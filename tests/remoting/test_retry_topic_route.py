"""A consumer group's retry topic is routable as soon as the group's first heartbeat is answered.

RocketMQ's broker creates ``%RETRY%<group>`` when a consumer of the group heart-beats
and registers it with the NameServers at once; clients (ali-ons, the C++ client) look
the retry topic up right after, and one that finds no route logs route errors and
consumes its retries only after its next route refresh and rebalance (20-30 s).
"""

from __future__ import annotations

from ferrymq.clients.instance import ClientInstance
from ferrymq.protocols.remoting import RequestCode, ResponseCode, request
from ferrymq.protocols.remoting import bodies as B

from .conftest import SMALL_STORE

# RocketMQ's own period: nothing but the heartbeat itself may make the route appear
# within the test.
SLOW_REGISTRATION = SMALL_STORE + "[remoting]\nregister_interval_s = 30.0\n"


def heartbeat_of(group: str, model: str = "CLUSTERING") -> list[B.ConsumerData]:
    return [B.ConsumerData(group, "CONSUME_PASSIVELY", model, "CONSUME_FROM_LAST_OFFSET",
                           (B.SubscriptionData("Orders"),))]


async def route_code(inst: ClientInstance, topic: str) -> tuple[int, B.TopicRouteData | None]:
    resp = await inst.namesrv_invoke(request(RequestCode.GET_ROUTEINFO_BY_TOPIC, 0,
                                             {"topic": topic}))
    return resp.code, B.TopicRouteData.decode(resp.body) if resp.code == 0 else None


async def test_retry_topic_is_routable_when_the_first_heartbeat_is_answered(
        start_broker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    conf = tmp_path / "b.toml"
    conf.write_text('broker_name = "broker-a"\n' + SLOW_REGISTRATION)
    b = start_broker("namesrv", "remoting", extra_args=("--config", str(conf)))
    inst = ClientInstance(b.address("namesrv"))
    async with inst:
        inst.broker_addrs["broker-a"] = b.address("remoting")
        # Several groups in a row: each heartbeat, then at once the route query a
        # client makes next. (On the old code the registration that the topic change
        # triggered was still on its way for most of them.)
        for i in range(6):
            group = f"CID-fresh-{i}"
            inst.consumer_data = lambda g=group: heartbeat_of(g)  # type: ignore[misc]
            await inst.send_heartbeats()
            code, route = await route_code(inst, f"%RETRY%{group}")
            assert code == ResponseCode.SUCCESS, f"no route for %RETRY%{group} after its heartbeat"
            assert route is not None
            assert [(q.brokerName, q.readQueueNums) for q in route.queueDatas] == [("broker-a", 1)]
            assert [bd.master_addr for bd in route.brokerDatas] == [b.address("remoting")]


async def test_broadcasting_groups_get_no_retry_topic(start_broker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Broadcasting consumers never send messages back (RocketMQ drops failed broadcast
    messages), so their heartbeat creates no retry topic."""
    conf = tmp_path / "b.toml"
    conf.write_text('broker_name = "broker-a"\n' + SLOW_REGISTRATION)
    b = start_broker("namesrv", "remoting", extra_args=("--config", str(conf)))
    inst = ClientInstance(b.address("namesrv"))
    async with inst:
        inst.broker_addrs["broker-a"] = b.address("remoting")
        inst.consumer_data = lambda: heartbeat_of("CID-bcast", "BROADCASTING")
        await inst.send_heartbeats()
        code, _ = await route_code(inst, "%RETRY%CID-bcast")
        assert code == ResponseCode.TOPIC_NOT_EXIST
