"""docs/remoting.md, "Errors" and the NameServer's rules: every documented mapping, proven."""

from __future__ import annotations

import time

import pytest
import trio
from ferrymq.clients.remoting import RemotingClient
from ferrymq.core import errors as E
from ferrymq.gateways.remoting.processor import error_code
from ferrymq.protocols.remoting import RequestCode, ResponseCode, request
from ferrymq.protocols.remoting import headers as H

from .conftest import SMALL_STORE, broker_config
from .test_broker import pull_req, send_v2

R = ResponseCode


@pytest.mark.parametrize("exc, code", [
    (E.TopicNotFound, R.TOPIC_NOT_EXIST), (E.TopicExists, R.TOPIC_EXIST_ALREADY),
    (E.PermissionDenied, R.NO_PERMISSION), (E.InvalidMessage, R.MESSAGE_ILLEGAL),
    (E.CorruptMessage, R.MESSAGE_ILLEGAL), (E.MessageTooLarge, R.MESSAGE_ILLEGAL),
    (E.InvalidFilter, R.SUBSCRIPTION_PARSE_FAILED),
    (E.GroupNotFound, R.SUBSCRIPTION_GROUP_NOT_EXIST), (E.InvalidArgument, R.INVALID_PARAMETER),
    (E.InvalidTopicName, R.INVALID_PARAMETER), (E.InvalidGroupName, R.INVALID_PARAMETER),
    (E.QueueNotFound, R.INVALID_PARAMETER), (E.OffsetOutOfRange, R.INVALID_PARAMETER),
    (E.StoreError, R.SERVICE_NOT_AVAILABLE), (E.FlushFailed, R.SERVICE_NOT_AVAILABLE),
    (E.DiskFull, R.SERVICE_NOT_AVAILABLE), (E.ShuttingDown, R.SERVICE_NOT_AVAILABLE),
    (E.FerryError, R.SYSTEM_ERROR),
])
def test_every_core_error_has_its_rocketmq_code(exc: type[E.FerryError], code: int) -> None:
    assert error_code(exc()) == code


async def test_errors_on_the_wire(start_broker, tmp_path) -> None:
    b = start_broker("namesrv", "remoting", extra_args=(
        "--config", broker_config(tmp_path, "e", extra="max_message_size = 1000\n")))
    addr = b.address("remoting")
    async with RemotingClient() as rc:
        async def code_of(cmd) -> int:  # type: ignore[no-untyped-def]
            return (await rc.invoke(addr, cmd)).code

        assert await code_of(pull_req("Nope", 0, 0)) == R.TOPIC_NOT_EXIST
        assert await code_of(send_v2("Big", b"x" * 2000)) == R.MESSAGE_ILLEGAL
        await rc.invoke(addr, request(RequestCode.UPDATE_AND_CREATE_TOPIC, 0,
                                      H.CreateTopicRequestHeader("RO", perm=4).to_ext()))
        assert await code_of(send_v2("RO", b"x")) == R.NO_PERMISSION
        await rc.invoke(addr, send_v2("Q", b"x"))
        assert await code_of(pull_req("Q", 99, 0)) == R.INVALID_PARAMETER
        assert await code_of(send_v2("bad topic!", b"x")) == R.INVALID_PARAMETER
        assert await code_of(request(RequestCode.GET_CONSUME_STATS, 0, {
            "consumerGroup": "never-seen"})) == R.SUBSCRIPTION_GROUP_NOT_EXIST
        # the default topic is routed while brokers create topics on first send
        route = await rc.invoke(b.address("namesrv"), request(
            RequestCode.GET_ROUTEINFO_BY_TOPIC, 0, {"topic": "TBW102"}))
        assert route.code == R.SUCCESS
        compressed = await rc.invoke(b.address("namesrv"), request(
            RequestCode.REGISTER_BROKER, 0, {**H.RegisterBrokerRequestHeader(
                "x", "127.0.0.1:1", "c").to_ext(), "compressed": "true"}, b"\x00"))
        assert compressed.code == R.SYSTEM_ERROR and "compressed" in (compressed.remark or "")
        missing = await rc.invoke(b.address("namesrv"), request(
            RequestCode.GET_ROUTEINFO_BY_TOPIC, 0, {"topic": "NotRouted"}))
        assert missing.code == R.TOPIC_NOT_EXIST


async def test_suspended_pulls_per_connection_are_bounded(start_broker, tmp_path) -> None:
    conf = tmp_path / "s.toml"
    conf.write_text(SMALL_STORE + "[remoting]\nmax_suspended = 1\n")
    b = start_broker("remoting", extra_args=("--config", str(conf)))
    addr = b.address("remoting")
    async with RemotingClient() as rc:
        await rc.invoke(addr, send_v2("W", b"x"))
        answered = []

        async def poll(tag: str) -> None:
            t0 = time.monotonic()
            r = await rc.invoke(addr, pull_req("W", 0, 1, suspend_ms=1500), 5)
            answered.append((tag, r.code, time.monotonic() - t0))

        async with trio.open_nursery() as n:
            n.start_soon(poll, "first")
            await trio.sleep(0.3)
            n.start_soon(poll, "second")
        by_tag = {t: (c, dt) for t, c, dt in answered}
        assert by_tag["second"][0] == R.PULL_NOT_FOUND and by_tag["second"][1] < 1.0
        assert by_tag["first"][0] == R.PULL_NOT_FOUND and by_tag["first"][1] >= 1.4
