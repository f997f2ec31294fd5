"""Every ``ferrymq`` command that lists something answers ``--json`` with JSON lines whose
numbers are JSON numbers: RocketMQ carries counts and offsets as strings (extFields, the
runtime table), and the CLI must not pass them on as such (issue 17: ``dlq show`` and
``cluster list`` printed them as strings). The table below must name every command with
``--json``: a new one fails here until it is added."""

from __future__ import annotations

import json
import re
import time

import click
import trio
from click.testing import CliRunner
from ferrymq.clients import Message, Producer
from ferrymq.clients.remoting import RemotingClient
from ferrymq.gateways.cli import main
from ferrymq.protocols.remoting import RequestCode, ResponseCode, request

from .conftest import FAST_CLIENT

# Text fields that may be all digits by chance (ids, bodies, names), and a topic config's
# value, a string by definition (Kafka's DescribeConfigs and kafka-configs show them so).
TEXT = {"msgId", "offsetMsgId", "originMsgId", "body", "keys", "tags", "address", "version",
        "group", "topic", "broker", "cluster", "originTopic", "name", "value"}
_DIGITS = re.compile(r"-?\d+(\.\d+)?")


def json_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    out: set[tuple[str, ...]] = set()
    for name, cmd in group.commands.items():
        path = (*prefix, name)
        if isinstance(cmd, click.Group):
            out |= json_commands(cmd, path)
        elif any("--json" in p.opts for p in cmd.params):
            out.add(path)
    return out


def numbers_are_numbers(row: object, where: str) -> None:
    if isinstance(row, dict):
        for k, v in row.items():
            if isinstance(v, str) and k not in TEXT and k != "properties":
                assert not _DIGITS.fullmatch(v), f"{where}: {k}={v!r} is a number as a string"
            elif k != "properties":
                numbers_are_numbers(v, where)
    elif isinstance(row, list):
        for v in row:
            numbers_are_numbers(v, where)


def json_rows(runner: CliRunner, *args: str) -> list[dict]:
    r = runner.invoke(main, [*args, "--json"], catch_exceptions=False)
    assert r.exit_code == 0, (args, r.output)
    return [json.loads(x) for x in r.stdout.splitlines() if x.strip()]


def test_every_json_output_has_numbers_as_numbers(native) -> None:
    ns = native.address("namesrv")
    runner = CliRunner()

    def run(*args: str) -> list[dict]:
        rows = json_rows(runner, *args, "-n", ns)
        for row in rows:
            numbers_are_numbers(row, " ".join(args))
        return rows

    sent = [json.loads(x) for x in runner.invoke(
        main, ["produce", "JsonT", "-n", ns], input="a\nb\n").stdout.splitlines()]
    addr = native.address("remoting")

    async def setup() -> str:
        async with RemotingClient() as rc:
            s = sent[0]
            resp = await rc.invoke(addr, request(RequestCode.CONSUMER_SEND_MSG_BACK, 0, {
                "group": "json-g", "offset": str(int(s["offsetMsgId"][16:], 16)),
                "originMsgId": s["msgId"], "originTopic": "JsonT", "delayLevel": "-1"}))
            assert resp.code == ResponseCode.SUCCESS
        async with Producer(ns, "json-pg", **FAST_CLIENT) as p:
            timed = await p.send(Message("JsonT", b"later",
                                         deliver_at_ms=int(time.time() * 1000) + 600_000))
        return timed.msg_id

    timed_id = trio.run(setup)
    # -m 2 ends it; the idle timeout only bounds a consumer that never got its queues
    # (the rebalance can take seconds on a loaded machine).
    consumed = runner.invoke(main, ["consume", "JsonT", "-n", ns, "-g", "json-c", "--from",
                                    "earliest", "-m", "2", "--idle-timeout", "60"])
    assert len(consumed.stdout.splitlines()) == 2, consumed.output
    # Offsets are persisted as the consumer closes: wait until the broker shows them.
    deadline = time.monotonic() + 15
    while not json_rows(runner, "group", "describe", "json-c", "-n", ns):
        assert time.monotonic() < deadline, "the consume's offsets never reached the broker"
        time.sleep(0.1)
    letter = sent[0]["msgId"]
    cases: dict[tuple[str, ...], tuple[str, ...]] = {
        ("topic", "create"): ("JsonNew", "-q", "2"),
        ("topic", "list"): (),
        ("topic", "config", "get"): ("JsonT", "--all"),
        ("topic", "describe"): ("JsonT",),
        ("group", "list"): (),
        ("group", "describe"): ("json-c",),
        ("offset", "reset"): ("-g", "json-c", "-t", "JsonT", "--to-time", "earliest"),
        ("dlq", "list"): ("json-g",),
        ("dlq", "resend"): ("json-g", letter),
        ("cluster", "list"): (),
        ("timer", "stats"): (),
        ("timer", "list"): ("--hours", "2"),
        ("timer", "cancel"): (timed_id, "--yes"),
        ("topic", "delete"): ("JsonNew", "--yes"),
    }
    # bench: its own reports; top: its own test (tests/http/test_top.py); store check reads a
    # stopped broker's directory (tests/faults/test_store_check.py); cluster elect needs etcd
    # (tests/cluster/test_operator.py).
    elsewhere = {("store", "check"), ("cluster", "elect")}
    listed = {c for c in json_commands(main) if c[0] not in ("bench", "top")} - elsewhere
    assert listed == set(cases), "every command with --json is checked here"
    for path, args in cases.items():
        rows = run(*path, *args)
        assert rows, path
    # dlq show answers one JSON document (no --json: it has no table)
    shown = json.loads(runner.invoke(main, ["dlq", "show", "json-g", letter, "-n", ns]).stdout)
    numbers_are_numbers(shown, "dlq show")
    assert isinstance(shown["offset"], int) and isinstance(shown["reconsumeTimes"], int)
    assert shown["resent"] is True
    [cl] = run("cluster", "list")
    assert isinstance(cl["topics"], int) and isinstance(cl["messages_in"], int)
