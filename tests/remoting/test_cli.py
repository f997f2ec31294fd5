"""The native CLI with click's CliRunner against a real broker: topics, produce, consume, groups,
offset reset, message lookup, cluster list."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from ferrymq.gateways.admin import parse_time
from ferrymq.gateways.cli import main


@pytest.fixture
def cli(native):  # type: ignore[no-untyped-def]
    runner = CliRunner()
    ns = native.address("namesrv")

    def run(*args: str, input: str | None = None, ok: bool = True):  # type: ignore[no-untyped-def]
        result = runner.invoke(main, [*args, "-n", ns], input=input, catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    return run


def lines(output: str) -> list[dict]:
    return [json.loads(x) for x in output.splitlines() if x.startswith("{")]


def test_parse_time_forms() -> None:
    now = 1_700_000_000_000
    assert parse_time("earliest", now) == 0 and parse_time("latest", now) == -1
    assert parse_time("1699999999000", now) == 1_699_999_999_000
    assert parse_time("10m", now) == now - 600_000
    assert parse_time("2h ago", now) == now - 7_200_000
    assert parse_time("2023-11-14T22:13:20Z", now) == now
    assert parse_time("2023-11-14T22:13:20", now) == now


def test_topic_lifecycle_produce_and_consume(cli) -> None:  # type: ignore[no-untyped-def]
    created = lines(cli("topic", "create", "CliTopic", "--queues", "2").output)
    assert created == [{"topic": "CliTopic", "queues": 2, "brokers": ["broker-a"]}]
    assert {"topic": "CliTopic"} in lines(cli("topic", "list").output)
    sent = lines(cli("produce", "CliTopic", "--tags", "t1", "--keys", "k-9",
                     "-p", "color=blue", input="one\ntwo\nthree\n").output)
    assert [s["offset"] for s in sent] == [0, 0, 1] and {s["queue"] for s in sent} == {0, 1}
    cli("produce", "CliTopic", "four", "five", "--batch", "2", "--tags", "t2")
    desc = lines(cli("topic", "describe", "CliTopic").output)
    assert sum(r["messages"] for r in desc) == 5
    got = lines(cli("consume", "CliTopic", "--group", "cli-g", "--from", "earliest",
                    "-m", "5", "--idle-timeout", "10").output)
    assert sorted(m["body"] for m in got) == ["five", "four", "one", "three", "two"]
    assert {m["tags"] for m in got} == {"t1", "t2"}
    one = next(m for m in got if m["body"] == "one")
    assert one["keys"] == "k-9" and one["properties"]["color"] == "blue"
    tagged = lines(cli("consume", "CliTopic", "--from", "earliest", "-e", "t2",
                       "-m", "2", "--idle-timeout", "10").output)
    assert sorted(m["body"] for m in tagged) == ["five", "four"]
    sql = lines(cli("consume", "CliTopic", "--from", "earliest", "--sql", "color = 'blue'",
                    "-m", "3", "--idle-timeout", "10").output)
    assert sorted(m["body"] for m in sql) == ["one", "three", "two"]
    shown = lines(cli("message", "show", one["msgId"]).output)
    assert shown[0]["body"] == "one"
    by_key = lines(cli("message", "show", "--topic", "CliTopic", "--key", "k-9").output)
    assert len(by_key) == 3
    refused = cli("topic", "delete", "CliTopic", ok=False)
    assert refused.exit_code == 2 and "--yes" in refused.output
    cli("topic", "delete", "CliTopic", "--yes")
    assert {"topic": "CliTopic"} not in lines(cli("topic", "list").output)


def test_group_describe_and_offset_reset(cli) -> None:  # type: ignore[no-untyped-def]
    cli("topic", "create", "Lag", "--queues", "1")
    cli("produce", "Lag", *[f"m{i}" for i in range(6)])
    cli("consume", "Lag", "--group", "lagger", "--from", "earliest", "-m", "4",
        "--idle-timeout", "10")
    rows = lines(cli("group", "describe", "lagger", "--topic", "Lag").output)
    assert len(rows) == 1 and rows[0]["log_end_offset"] == 6
    assert rows[0]["current_offset"] == 4 and rows[0]["lag"] == 2, "exactly -m messages consumed"
    assert "lagger" in [g["group"] for g in lines(cli("group", "list").output)]
    dry = lines(cli("offset", "reset", "-g", "lagger", "-t", "Lag", "--to-time",
                    "earliest").output)
    assert dry[0]["new_offset"] == 0 and dry[0]["applied"] is False
    assert lines(cli("group", "describe", "lagger", "-t", "Lag").output)[0]["current_offset"] == 4
    done = lines(cli("offset", "reset", "-g", "lagger", "-t", "Lag", "--to-time", "earliest",
                     "--execute").output)
    assert done[0]["applied"] is True
    assert lines(cli("group", "describe", "lagger", "-t", "Lag").output)[0]["current_offset"] == 0
    again = lines(cli("consume", "Lag", "--group", "lagger", "-m", "6",
                      "--idle-timeout", "10").output)
    assert [m["body"] for m in again] == [f"m{i}" for i in range(6)]


def test_cluster_list_and_tables(cli) -> None:  # type: ignore[no-untyped-def]
    rows = lines(cli("cluster", "list").output)
    assert rows[0]["broker"] == "broker-a" and rows[0]["cluster"] == "DefaultCluster"
    table = cli("cluster", "list", "-o", "table").output
    assert "BROKER" in table and "broker-a" in table


def test_errors_are_messages_not_tracebacks(native) -> None:
    runner = CliRunner()
    r = runner.invoke(main, ["topic", "describe", "NoSuchTopic", "-n", native.address("namesrv")])
    assert r.exit_code == 1 and "TOPIC_NOT_EXIST" in r.output
    r = runner.invoke(main, ["topic", "list", "-n", "127.0.0.1:1"])
    assert r.exit_code == 1 and "Error" in r.output and "Traceback" not in r.output


def test_dlq_list_show_and_resend_once_unless_forced(cli, native) -> None:  # type: ignore[no-untyped-def]
    import trio
    from ferrymq.clients.remoting import RemotingClient
    from ferrymq.protocols.remoting import RequestCode, ResponseCode, request

    sent = lines(cli("produce", "CliDlq", "--keys", "dlq-key", input="poison\nvenom\n").output)
    addr = native.address("remoting")

    async def dead_letter_both() -> None:
        async with RemotingClient() as rc:
            for s in sent:
                # delayLevel -1: straight to the DLQ (RocketMQ's convention)
                resp = await rc.invoke(addr, request(RequestCode.CONSUMER_SEND_MSG_BACK, 0, {
                    "group": "cli-dlq", "offset": str(int(s["offsetMsgId"][16:], 16)),
                    "originMsgId": s["msgId"], "originTopic": "CliDlq", "delayLevel": "-1"}))
                assert resp.code == ResponseCode.SUCCESS, resp.remark

    trio.run(dead_letter_both)
    listed = lines(cli("dlq", "list", "cli-dlq").output)
    assert [(d["offset"], d["originTopic"], d["resent"]) for d in listed] == [
        (0, "CliDlq", False), (1, "CliDlq", False)]
    assert {d["msgId"] for d in listed} == {s["msgId"] for s in sent}
    poison = next(d for d in listed if d["msgId"] == sent[0]["msgId"])
    shown = lines(cli("dlq", "show", "cli-dlq", poison["msgId"]).output)[0]
    assert shown["message"]["body"] == "poison" and shown["message"]["topic"] == "%DLQ%cli-dlq"
    assert shown["resent"] is False and shown["originTopic"] == "CliDlq"
    assert lines(cli("dlq", "show", "cli-dlq", "0").output)[0]["msgId"] == poison["msgId"]

    resent = lines(cli("dlq", "resend", "cli-dlq", poison["msgId"]).output)
    assert [(r["msgId"], r["topic"]) for r in resent] == [(poison["msgId"], "CliDlq")]
    again = cli("dlq", "resend", "cli-dlq", poison["msgId"], ok=False)
    assert again.exit_code != 0 and "already resent" in again.output
    rest = lines(cli("dlq", "resend", "cli-dlq", "--all").output)
    assert [r["offset"] for r in rest] == [1], "--all skips what was resent"
    assert lines(cli("dlq", "resend", "cli-dlq", "--all").output) == []
    assert all(d["resent"] for d in lines(cli("dlq", "list", "cli-dlq").output))
    got = lines(cli("consume", "CliDlq", "--group", "cli-dlq-check", "--from", "earliest",
                    "-m", "4", "--idle-timeout", "5").output)
    assert sorted(m["body"] for m in got) == ["poison", "poison", "venom", "venom"], \
        "each letter came back once"
    back = next(m for m in got if m["body"] == "poison" and m["offset"] >= 1)
    assert back["msgId"] == poison["msgId"] and back["reconsumeTimes"] == 0
    assert "DLQ_ORIGIN_TOPIC" not in back["properties"]
    forced = lines(cli("dlq", "resend", "cli-dlq", "0", "--force").output)
    assert len(forced) == 1
    for bad in (("dlq", "resend", "cli-dlq"), ("dlq", "resend", "cli-dlq", "0", "--all")):
        assert cli(*bad, ok=False).exit_code == 2  # usage: name letters or --all
    missing = cli("dlq", "show", "cli-dlq", "NO-SUCH-ID", ok=False)
    assert missing.exit_code == 1 and "no dead letter" in missing.output
    assert lines(cli("dlq", "list", "nobody").output) == []


def test_dlq_resend_of_an_unknown_letter_is_an_error(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("dlq", "resend", "nobody", "NO-SUCH-ID", ok=False)
    assert result.exit_code == 1 and "NO-SUCH-ID" in result.output


def test_topic_configs_through_the_cli_and_the_remoting_attributes(cli, native) -> None:  # type: ignore[no-untyped-def]
    created = lines(cli("topic", "create", "CfgTopic", "-q", "1", "-c", "cleanup.policy=compact",
                        "-c", "retention.ms=60000").output)
    assert created[0]["configs"] == {"cleanup.policy": "compact", "retention.ms": "60000"}
    got = {r["name"]: r for r in lines(cli("topic", "config", "get", "CfgTopic").output)}
    assert {n: r["value"] for n, r in got.items()} == {"cleanup.policy": "compact",
                                                      "retention.ms": "60000"}
    cli("topic", "config", "set", "CfgTopic", "cleanup.policy=compact,delete",
        "--delete", "retention.ms")
    got = {r["name"]: r for r in lines(cli("topic", "config", "get", "CfgTopic", "--all").output)}
    assert got["cleanup.policy"]["value"] == "compact,delete"
    assert got["retention.ms"]["source"] != "topic" and got["segment.bytes"]["read_only"]
    desc = lines(cli("topic", "describe", "CfgTopic").output)
    assert len(desc) == 1, "changing configs keeps the queue count"
    for bad in (["retention.ms=abc"], ["no.such.config=1"], ["segment.bytes=1"]):
        refused = cli("topic", "config", "set", "CfgTopic", *bad, ok=False)
        assert refused.exit_code != 0 and "invalid" in refused.output.lower(), refused.output
    refused = cli("topic", "create", "CfgBad", "-c", "retention.ms=-5", ok=False)
    assert refused.exit_code != 0
    assert {"topic": "CfgBad"} not in lines(cli("topic", "list").output)
