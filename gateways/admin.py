"""The native CLI: topics, groups, produce, consume, offsets, messages, cluster, NameServer.

``ferrymq topic create|list|describe|delete``, ``group list|describe``,
``produce``, ``consume``, ``offset reset``, ``message show``, ``dlq
list|show|resend``, ``timer cancel|stats|list``, ``cluster list`` and ``namesrv`` (a
standalone NameServer). Every command talks to a NameServer (``-n``,
``FERRYMQ_NAMESRV``, default 127.0.0.1:9876; a broker address works too) through
the FerryMQ client; over TLS with ``--tls`` or ``--tls-ca FILE`` (and
``--tls-cert``/``--tls-key`` to present a client certificate), as
docs/security.md says.

Conventions (docs/cli.md): data goes to stdout, as a table on a terminal or
JSON lines otherwise (``-o table|json``, or ``--json``), numbers as JSON numbers;
progress and hints go to stderr and only on a terminal; ``topic delete`` and
``timer cancel`` want ``--yes`` and ``offset reset`` is a dry run until
``--execute``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio
import click

from ..clients import Admin, ClientError, Message, Producer, PushConsumer
from ..clients.message import MessageExt

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
DEFAULT_NAMESRV = "127.0.0.1:9876"
T = TypeVar("T")

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_time(text: str, now_ms: int | None = None) -> int:
    """A point in time as epoch milliseconds: ``earliest`` (0), ``latest`` (-1), epoch
    milliseconds, an ISO 8601 date/time (UTC unless it says otherwise), or a duration
    ago (``90s``, ``10m``, ``2h``, ``1d``)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    t = text.strip().lower()
    if t in ("earliest", "first", "beginning"):
        return 0
    if t in ("latest", "last", "end", "now"):
        return -1
    if t.isdigit():
        return int(t)
    m = _DURATION.match(t.removesuffix(" ago"))
    if m:
        return now_ms - int(float(m.group(1)) * _UNIT_MS[m.group(2)])
    try:
        dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: use earliest, latest, epoch ms, ISO 8601 or a duration like 10m") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _iso(ms: int) -> str:
    if ms <= 0:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _run(fn: Callable[[], Awaitable[T]]) -> T:
    try:
        return anyio.run(fn)
    except ClientError as exc:
        raise click.ClickException(str(exc)) from None
    except BaseExceptionGroup as group:
        match, _rest = group.split(ClientError)
        if match is None:
            raise
        first: BaseException = match
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise click.ClickException(str(first)) from None


def _err_console() -> Any:
    from rich.console import Console
    return Console(stderr=True)


def _hint(text: str) -> None:
    if sys.stderr.isatty():
        _err_console().print(text, style="dim")


def _emit(rows: Sequence[dict[str, Any]], columns: Sequence[str], output: str | None,
          title: str | None = None) -> None:
    """Rows as a rich table (a terminal, or ``-o table``) or JSON lines."""
    fmt = output or ("table" if sys.stdout.isatty() else "json")
    if fmt == "json":
        for r in rows:
            click.echo(json.dumps(r, default=str))
        return
    from rich.console import Console
    from rich.table import Table
    table = Table(title=title)
    for c in columns:
        table.add_column(c.upper().replace("_", "-"))
    for r in rows:
        table.add_row(*("" if r.get(c) is None else ",".join(map(str, r[c]))
                        if isinstance(r.get(c), list) else str(r.get(c)) for c in columns))
    Console(width=max(100, 20 * len(columns))).print(table)


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    ctx.meta[f"ferrymq.{param.name}"] = value
    return value


_TLS_OPTIONS = (
    (("--tls",), dict(is_flag=True, envvar="FERRYMQ_TLS",
                      help="Connect over TLS (the system's CAs unless --tls-ca).")),
    (("--tls-ca",), dict(metavar="FILE", envvar="FERRYMQ_TLS_CA", type=click.Path(dir_okay=False),
                         help="Connect over TLS, trusting the CA(s) in this PEM file.")),
    (("--tls-cert",), dict(metavar="FILE", envvar="FERRYMQ_TLS_CERT",
                           type=click.Path(dir_okay=False),
                           help="Client certificate (PEM) to present over TLS.")),
    (("--tls-key",), dict(metavar="FILE", envvar="FERRYMQ_TLS_KEY", type=click.Path(dir_okay=False),
                          help="Its private key (when not in --tls-cert).")),
    (("--tls-insecure",), dict(is_flag=True,
                               help="Over TLS, do not verify the server (tests only).")),
)


def namesrv_option(f: Callable[..., Any]) -> Callable[..., Any]:
    for names, kw in reversed(_TLS_OPTIONS):
        f = click.option(*names, expose_value=False, callback=_remember, **kw)(f)  # type: ignore[arg-type]
    return click.option("-n", "--namesrv", envvar="FERRYMQ_NAMESRV", default=DEFAULT_NAMESRV,
                        show_default=True, metavar="HOST:PORT[;HOST:PORT]",
                        help="NameServer(s), or one broker's address.")(f)


def connect_options() -> dict[str, Any]:
    """The client options the command line asked for (``tls=`` an SSL context)."""
    meta = click.get_current_context().meta
    ca, cert = meta.get("ferrymq.tls_ca"), meta.get("ferrymq.tls_cert")
    insecure = bool(meta.get("ferrymq.tls_insecure"))
    if not (meta.get("ferrymq.tls") or ca or cert or insecure):
        return {}
    from .tls import client_context
    try:
        return {"tls": client_context(ca, cert, meta.get("ferrymq.tls_key"),
                                      verify=not insecure)}
    except (OSError, ValueError) as exc:
        raise click.UsageError(f"TLS: {exc}") from None


def output_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``-o table|json`` and its shorthand ``--json`` (kafka-topics and mqadmin users
    type either): the command receives ``output``."""
    @functools.wraps(f)
    def wrapper(*args: Any, as_json: bool = False, **kwargs: Any) -> Any:
        if as_json:
            kwargs["output"] = "json"
        return f(*args, **kwargs)

    wrapper = click.option("--json", "as_json", is_flag=True,
                           help="JSON lines (the same as -o json).")(wrapper)
    return click.option("-o", "--output", type=click.Choice(["table", "json"]),
                        help="table (default on a terminal) or JSON lines.")(wrapper)


def _int(value: Any) -> int | None:
    """A count or offset as a JSON number: RocketMQ's extFields and runtime tables carry
    every value as a string; None stays None (unknown), text that is no number too."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    try:
        return int(str(value).strip())
    except ValueError:
        return None


def _bool(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


@contextlib.contextmanager
def progress(description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr, only on a terminal: yields ``advance(n)``. Piped or
    redirected, nothing is drawn (data on stdout stays clean)."""
    if not sys.stderr.isatty():
        def nothing(n: int = 1) -> None:
            pass
        yield nothing
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   console=_err_console(), transient=True)
    with bar:
        task = bar.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            bar.advance(task, n)
        yield advance


def _message_row(m: MessageExt) -> dict[str, Any]:
    try:
        body: Any = m.body.decode()
    except UnicodeDecodeError:
        body = m.body.hex()
    props = {k: v for k, v in m.properties.items() if k not in ("TAGS", "KEYS", "UNIQ_KEY")}
    return {"topic": m.topic, "queue": m.queue_id, "offset": m.queue_offset, "msgId": m.msg_id,
            "offsetMsgId": m.offset_msg_id, "tags": m.tags, "keys": " ".join(m.keys) or None,
            "bornAt": _iso(m.born_timestamp), "storedAt": _iso(m.store_timestamp),
            "reconsumeTimes": m.reconsume_times, "properties": props, "body": body}


# ====================================================================== topic


@click.group(context_settings=CONTEXT)
def topic() -> None:
    """Create, list, describe and delete topics."""


@topic.command("create", context_settings=CONTEXT)
@click.argument("name")
@click.option("-q", "--queues", type=click.IntRange(1, 1024), default=4, show_default=True,
              help="Queues per broker.")
@click.option("--order", is_flag=True, help="An ordered (FIFO) topic.")
@click.option("-b", "--broker", "brokers", multiple=True,
              help="Broker name to create it on (repeat; default: every broker).")
@click.option("-c", "--config", "configs", multiple=True, metavar="NAME=VALUE",
              help="A topic config, Kafka's names (repeat): cleanup.policy=compact, "
                   "retention.ms=86400000...")
@namesrv_option
@output_option
def topic_create(name: str, queues: int, order: bool, brokers: tuple[str, ...],
                 configs: tuple[str, ...], namesrv: str, output: str | None) -> None:
    """Create a topic (or grow its queues) on the cluster's brokers."""
    settings = _pairs(configs)

    async def go() -> list[str]:
        async with Admin(namesrv, **connect_options()) as a:
            return await a.create_topic(name, queues, order=order, brokers=list(brokers) or None,
                                        configs=settings)
    names = _run(go)
    out: dict[str, Any] = {"topic": name, "queues": queues, "brokers": names}
    if settings:
        out["configs"] = settings
    _emit([out], ["topic", "queues", "brokers", "configs"], output)


def _pairs(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r}: expected NAME=VALUE")
        out[name] = value
    return out


@topic.group("config", context_settings=CONTEXT)
def topic_config() -> None:
    """Show and change a topic's configs (retention, cleanup policy, ...)."""


@topic_config.command("get", context_settings=CONTEXT)
@click.argument("name")
@click.option("--all", "show_all", is_flag=True, help="Also the configs at their defaults.")
@namesrv_option
@output_option
def topic_config_get(name: str, show_all: bool, namesrv: str, output: str | None) -> None:
    """Every config of a topic with its value and where it comes from."""
    async def go() -> dict[str, Any]:
        async with Admin(namesrv, **connect_options()) as a:
            return await a.topic_config(name)
    doc = _run(go)
    rows = [{"name": c["name"], "value": c["value"], "source": c["source"],
             "read_only": c["readOnly"]}
            for c in doc.get("ferrymqConfigs", []) if show_all or c["source"] == "topic"]
    _emit(rows, ["name", "value", "source", "read_only"], output, title=f"topic {name}")


@topic_config.command("set", context_settings=CONTEXT)
@click.argument("name")
@click.argument("configs", nargs=-1, metavar="[NAME=VALUE]...")
@click.option("-d", "--delete", "deleted", multiple=True, metavar="NAME",
              help="Back to the default (repeat).")
@namesrv_option
def topic_config_set(name: str, configs: tuple[str, ...], deleted: tuple[str, ...],
                     namesrv: str) -> None:
    """Set configs of a topic, or remove them (back to the broker's defaults)."""
    settings = _pairs(configs)
    if not settings and not deleted:
        raise click.UsageError("nothing to change: give NAME=VALUE or --delete NAME")

    async def go() -> None:
        async with Admin(namesrv, **connect_options()) as a:
            await a.alter_topic_configs(name, settings, list(deleted))
    _run(go)
    click.echo(json.dumps({"topic": name, "set": settings, "deleted": list(deleted)}))


@topic.command("list", context_settings=CONTEXT)
@namesrv_option
@output_option
@click.option("--all", "show_all", is_flag=True, help="Include system topics (%RETRY%, TBW102...).")
def topic_list(namesrv: str, output: str | None, show_all: bool) -> None:
    """List the topics the NameServer knows."""
    async def go() -> list[str]:
        async with Admin(namesrv, **connect_options()) as a:
            return await a.topics()
    names = [t for t in _run(go) if show_all or not t.startswith(("%", "TBW102", "RMQ_SYS_"))]
    _emit([{"topic": t} for t in names], ["topic"], output)


@topic.command("describe", context_settings=CONTEXT)
@click.argument("name")
@namesrv_option
@output_option
def topic_describe(name: str, namesrv: str, output: str | None) -> None:
    """Queues of a topic on each broker: offsets and last write."""
    async def go() -> list[Any]:
        async with Admin(namesrv, **connect_options()) as a:
            return await a.topic_stats(name)
    rows = [{"broker": s.queue.brokerName, "queue": s.queue.queueId, "min_offset": s.min_offset,
             "max_offset": s.max_offset, "messages": s.max_offset - s.min_offset,
             "last_write": _iso(s.last_update_ms)} for s in _run(go)]
    _emit(rows, ["broker", "queue", "min_offset", "max_offset", "messages", "last_write"], output,
          title=f"topic {name}")


@topic.command("delete", context_settings=CONTEXT)
@click.argument("name")
@click.option("--yes", is_flag=True, help="Really delete it.")
@namesrv_option
@output_option
def topic_delete(name: str, yes: bool, namesrv: str, output: str | None) -> None:
    """Delete a topic on every broker and the NameServers (asks for --yes)."""
    if not yes:
        raise click.UsageError(f"deleting topic {name} drops its messages: add --yes")

    async def go() -> None:
        async with Admin(namesrv, **connect_options()) as a:
            await a.delete_topic(name)
    _run(go)
    _emit([{"deleted": name}], ["deleted"], output)


# ====================================================================== group


@click.group(context_settings=CONTEXT)
def group() -> None:
    """List consumer groups and show their lag."""


@group.command("list", context_settings=CONTEXT)
@namesrv_option
@output_option
def group_list(namesrv: str, output: str | None) -> None:
    """Consumer groups known to the brokers."""
    async def go() -> list[dict[str, Any]]:
        async with Admin(namesrv, **connect_options()) as a:
            return await a.groups()
    rows = [{"group": g["groupName"], "online": g.get("online", False),
             "broadcast": g.get("consumeBroadcastEnable", False),
             "max_reconsume": g.get("retryMaxTimes"), "brokers": ",".join(g["brokers"])}
            for g in _run(go)]
    _emit(rows, ["group", "online", "broadcast", "max_reconsume", "brokers"], output)


@group.command("describe", context_settings=CONTEXT)
@click.argument("name")
@click.option("-t", "--topic", "topic_name", help="Only this topic.")
@namesrv_option
@output_option
def group_describe(name: str, topic_name: str | None, namesrv: str, output: str | None) -> None:
    """Per queue: the group's committed offset, the queue's end and the lag."""
    async def go() -> tuple[list[Any], list[dict[str, Any]]]:
        async with Admin(namesrv, **connect_options()) as a:
            return await a.group_lag(name, topic_name), await a.group_members(name)
    lags, members = _run(go)
    rows = [{"group": name, "topic": r.queue.topic, "broker": r.queue.brokerName,
             "queue": r.queue.queueId,
             "current_offset": None if r.consumer_offset < 0 else r.consumer_offset,
             "log_end_offset": r.broker_offset, "lag": r.lag} for r in lags]
    _emit(rows, ["group", "topic", "broker", "queue", "current_offset", "log_end_offset", "lag"],
          output, title=f"group {name}: {len(members)} member(s) online")
    _hint(f"total lag {sum(r['lag'] for r in rows)}; members: "
          + (", ".join(m.get("clientId", "?") for m in members) or "none online"))


# ====================================================================== produce


def _read_stdin_lines() -> Iterable[str]:
    for line in sys.stdin:
        yield line.rstrip("\n")


@click.command(context_settings=CONTEXT)
@click.argument("topic_name", metavar="TOPIC")
@click.argument("bodies", nargs=-1)
@click.option("--tags", help="Tag of every message.")
@click.option("--keys", help="Keys of every message (space separated).")
@click.option("-p", "--property", "props", multiple=True, metavar="NAME=VALUE",
              help="A property (repeat).")
@click.option("--sharding-key", help="Ordered send: the same key always goes to one queue.")
@click.option("--batch", type=click.IntRange(1, 1024), default=1, show_default=True,
              help="Send this many messages per request.")
@click.option("--group", default="ferrymq-cli-producer", show_default=True)
@namesrv_option
def produce(topic_name: str, bodies: tuple[str, ...], tags: str | None, keys: str | None,
            props: tuple[str, ...], sharding_key: str | None, batch: int, group: str,
            namesrv: str) -> None:
    """Send messages: the BODIES arguments, or one message per line of stdin.
    Prints one JSON line per message sent (its id, queue and offset)."""
    properties: dict[str, str] = {}
    for p in props:
        k, sep, v = p.partition("=")
        if not sep or not k:
            raise click.BadParameter(f"{p!r} is not NAME=VALUE", param_hint="--property")
        properties[k] = v
    source: Iterable[str] = bodies if bodies else _read_stdin_lines()

    async def go() -> int:
        n = 0
        progress = None
        if sys.stderr.isatty():
            from rich.progress import Progress, SpinnerColumn, TextColumn
            progress = Progress(SpinnerColumn(), TextColumn("{task.completed} sent"),
                                console=_err_console(), transient=True)
            progress.start()
            task = progress.add_task("produce", total=None)
        try:
            async with Producer(namesrv, group, **connect_options()) as p:
                pending: list[Message] = []

                async def flush() -> None:
                    nonlocal n
                    if len(pending) == 1:
                        results = [await p.send(pending[0], sharding_key=sharding_key)]
                    else:
                        results = await p.send_batch(pending, sharding_key=sharding_key)
                    for r in results:
                        click.echo(json.dumps({"msgId": r.msg_id, "offsetMsgId": r.offset_msg_id,
                                               "topic": r.queue.topic,
                                               "broker": r.queue.brokerName,
                                               "queue": r.queue.queueId,
                                               "offset": r.queue_offset}))
                    n += len(results)
                    if progress is not None:
                        progress.update(task, completed=n)
                    pending.clear()

                for body in source:
                    pending.append(Message(topic_name, body.encode(), tags=tags, keys=keys,
                                           properties=properties))
                    if len(pending) >= batch:
                        await flush()
                if pending:
                    await flush()
        finally:
            if progress is not None:
                progress.stop()
        return n

    n = _run(go)
    _hint(f"{n} message(s) sent to {topic_name}")


# ====================================================================== consume


@click.command(context_settings=CONTEXT)
@click.argument("topic_name", metavar="TOPIC")
@click.option("-g", "--group", help="Consumer group (default: a new one for this run).")
@click.option("--from", "start", default="latest", show_default=True,
              help="Where a group without offsets starts: earliest, latest or a TIME "
                   "(epoch ms, ISO 8601, or a duration ago like 10m).")
@click.option("-e", "--expression", default="*", show_default=True,
              help="Tag filter (TagA || TagB).")
@click.option("--sql", help="SQL92 property filter instead of a tag filter.")
@click.option("-m", "--max-messages", type=click.IntRange(min=1),
              help="Stop after this many messages.")
@click.option("--idle-timeout", type=float, default=None,
              help="Stop after this many seconds without a message.")
@click.option("--broadcast", is_flag=True, help="Broadcasting: every member gets everything.")
@namesrv_option
def consume(topic_name: str, group: str | None, start: str, expression: str, sql: str | None,
            max_messages: int | None, idle_timeout: float | None, broadcast: bool,
            namesrv: str) -> None:
    """Print messages as JSON lines until Ctrl-C, --max-messages or --idle-timeout."""
    when = parse_time(start)
    consume_from: str | int = "FIRST" if when == 0 else "LAST" if when == -1 else when
    group = group or f"ferrymq-cli-{int(time.time() * 1000)}"
    count = 0
    last = [time.monotonic()]

    async def go() -> None:
        done = anyio.Event()
        lock = anyio.Lock()

        async def handler(msgs: list[MessageExt]) -> None:
            nonlocal count
            async with lock:
                for m in msgs:
                    if max_messages is not None and count >= max_messages:
                        # Enough: park until shutdown cancels us, so that this message
                        # and the rest stay unconsumed for the group.
                        done.set()
                        await anyio.sleep_forever()
                    click.echo(json.dumps(_message_row(m)))
                    count += 1
                last[0] = time.monotonic()
                if max_messages is not None and count >= max_messages:
                    done.set()

        # shutdown_grace_s=0: the handler parked past --max-messages is to be
        # cancelled at once, not waited for.
        c = PushConsumer(namesrv, group, handler, **connect_options(), consume_from=consume_from,
                         message_model="BROADCASTING" if broadcast else "CLUSTERING",
                         client_name=group, shutdown_grace_s=0)
        if sql:
            c.subscribe(topic_name, sql, "SQL92")
        else:
            c.subscribe(topic_name, expression)
        async with c:
            while not done.is_set():
                with anyio.move_on_after(0.2):
                    await done.wait()
                if idle_timeout is not None and time.monotonic() - last[0] > idle_timeout:
                    break

    with contextlib.suppress(KeyboardInterrupt):
        _run(go)
    _hint(f"{count} message(s) from {topic_name} (group {group})")


class _Stop(Exception):
    """Raised in the handler past --max-messages: the message is left unconsumed."""


# ====================================================================== offset


@click.group(context_settings=CONTEXT)
def offset() -> None:
    """Move consumer group offsets."""


@offset.command("reset", context_settings=CONTEXT)
@click.option("-g", "--group", required=True)
@click.option("-t", "--topic", "topic_name", required=True)
@click.option("--to-time", required=True, metavar="TIME",
              help="earliest, latest, epoch ms, ISO 8601, or a duration ago (10m, 2h).")
@click.option("--execute", is_flag=True, help="Apply it (without: a dry run).")
@namesrv_option
@output_option
def offset_reset(group: str, topic_name: str, to_time: str, execute: bool, namesrv: str,
                 output: str | None) -> None:
    """Set the group's offsets on every queue of the topic to the first message stored
    at or after TIME. A dry run unless --execute; online consumers follow the reset."""
    ts = parse_time(to_time)

    async def go() -> list[dict[str, Any]]:
        async with Admin(namesrv, **connect_options()) as a:
            preview = await a.reset_offsets_preview(group, topic_name,
                                                    ts if ts >= 0 else 2**62)
            done = dict(await a.reset_offsets(group, topic_name, ts)) if execute else {}
        return [{"group": group, "topic": topic_name, "broker": q.brokerName, "queue": q.queueId,
                 "current_offset": None if cur < 0 else cur,
                 "new_offset": done.get(q, new), "applied": q in done}
                for q, cur, new in preview]

    rows = _run(go)
    _emit(rows, ["group", "topic", "broker", "queue", "current_offset", "new_offset", "applied"],
          output)
    if not execute:
        _hint("dry run: re-run with --execute to apply")


# ====================================================================== message


@click.group(context_settings=CONTEXT)
def message() -> None:
    """Look messages up."""


@message.command("show", context_settings=CONTEXT)
@click.argument("msg_id", required=False)
@click.option("-t", "--topic", "topic_name", help="With --key: the topic to search.")
@click.option("-k", "--key", help="Find by key instead of id.")
@namesrv_option
def message_show(msg_id: str | None, topic_name: str | None, key: str | None,
                 namesrv: str) -> None:
    """Show a message by id (client id or offset id), or messages by --topic and --key."""
    if not msg_id and not (key and topic_name):
        raise click.UsageError("give a message id, or --topic and --key")

    async def go() -> list[MessageExt]:
        async with Admin(namesrv, **connect_options()) as a:
            if msg_id:
                m = await a.message_by_id(msg_id)
                return [m] if m else []
            assert topic_name and key
            return await a.messages_by_key(topic_name, key)

    found = _run(go)
    if not found:
        raise click.ClickException("no such message")
    for m in found:
        click.echo(json.dumps(_message_row(m)))


# ====================================================================== dlq


@click.group(context_settings=CONTEXT)
def dlq() -> None:
    """Dead letters: list, show and resend them to their original topic."""


def _letter_row(d: dict[str, Any]) -> dict[str, Any]:
    """A dead letter's fields with JSON types: from a listing (a JSON body) and from
    VIEW_DEAD_LETTER (extFields, all strings) alike."""
    return {"broker": d.get("broker"), "offset": _int(d.get("queueOffset")),
            "msgId": d.get("msgId"), "originTopic": d.get("originTopic"),
            "originMsgId": d.get("originMsgId"), "reconsumeTimes": _int(d.get("reconsumeTimes")),
            "storedAt": _iso(_int(d.get("storeTimestamp")) or 0),
            "resent": _bool(d.get("resent"))}


def _ref(text: str) -> str | int:
    """A dead letter named by its DLQ queue offset (digits) or its message id."""
    return int(text) if text.isdigit() else text


@dlq.command("list", context_settings=CONTEXT)
@click.argument("group")
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True,
              help="First DLQ queue offset to list.")
@click.option("-m", "--max", "limit", type=click.IntRange(1, 1000), default=100,
              show_default=True, help="At most this many letters per broker.")
@click.option("-b", "--broker", help="Only this broker (by name).")
@namesrv_option
@output_option
def dlq_list(group: str, offset: int, limit: int, broker: str | None, namesrv: str,
             output: str | None) -> None:
    """The dead letters of GROUP (%DLQ%GROUP), oldest first: id, original topic, attempts,
    and whether each was resent already."""
    async def go() -> list[dict[str, Any]]:
        async with Admin(namesrv, **connect_options()) as a:
            return [_letter_row(d) for d in await a.dead_letters(group, offset, limit,
                                                                  broker=broker)]

    _emit(_run(go), ["broker", "offset", "msgId", "originTopic", "reconsumeTimes", "storedAt",
                     "resent"], output, title=f"%DLQ%{group}")


@dlq.command("show", context_settings=CONTEXT)
@click.argument("group")
@click.argument("ref", metavar="ID|OFFSET")
@click.option("-b", "--broker", help="Only this broker (by name).")
@namesrv_option
def dlq_show(group: str, ref: str, broker: str | None, namesrv: str) -> None:
    """One dead letter of GROUP, by message id or DLQ offset: its bookkeeping and the
    message itself, as JSON."""
    async def go() -> tuple[dict[str, str], MessageExt] | None:
        async with Admin(namesrv, **connect_options()) as a:
            return await a.dead_letter(group, _ref(ref), broker=broker)

    found = _run(go)
    if found is None:
        raise click.ClickException(f"no dead letter {ref} in %DLQ%{group}")
    letter, m = found
    click.echo(json.dumps({**_letter_row(letter), "message": _message_row(m)}))


@dlq.command("resend", context_settings=CONTEXT)
@click.argument("group")
@click.argument("refs", nargs=-1, metavar="[ID|OFFSET]...")
@click.option("--all", "every", is_flag=True, help="Every letter of GROUP not resent yet.")
@click.option("--force", is_flag=True, help="Resend letters that were resent before.")
@click.option("-b", "--broker", help="Only this broker (by name).")
@namesrv_option
@output_option
def dlq_resend(group: str, refs: tuple[str, ...], every: bool, force: bool, broker: str | None,
               namesrv: str, output: str | None) -> None:
    """Put dead letters of GROUP back into their original topic as fresh messages (same
    message id, reconsume count 0). A letter is resent once: again only with --force."""
    if bool(refs) == every:
        raise click.UsageError("name the letters (ids or DLQ offsets), or give --all")

    async def go() -> list[dict[str, Any]]:
        async with Admin(namesrv, **connect_options()) as a:
            done = await a.resend_dead_letters(group, [_ref(r) for r in refs] or None,
                                               force=force, broker=broker)
        return [{"broker": d.get("broker"), "offset": _int(d.get("queueOffset")),
                 "msgId": d.get("msgId"), "topic": d.get("topic"), "queue": _int(d.get("queueId")),
                 "queueOffset": _int(d.get("newQueueOffset"))} for d in done]

    with progress(f"resending dead letters of {group}"):
        rows = _run(go)
    _emit(rows, ["broker", "offset", "msgId", "topic", "queue", "queueOffset"], output)
    _hint(f"{len(rows)} dead letter(s) resent")


# ====================================================================== timer


@click.group(context_settings=CONTEXT)
def timer() -> None:
    """Timed messages: cancel one before its time, see the timers' counters and when
    the pending ones are due."""


@timer.command("cancel", context_settings=CONTEXT)
@click.argument("msg_id")
@click.option("--yes", is_flag=True, help="Really cancel it (the message is never delivered).")
@click.option("-b", "--broker", help="Only this broker (by name; default: every broker).")
@namesrv_option
@output_option
def timer_cancel(msg_id: str, yes: bool, broker: str | None, namesrv: str,
                 output: str | None) -> None:
    """Cancel the timed message MSG_ID (the id its send returned) before its delivery
    time: it is never delivered. Asks for --yes."""
    if not yes:
        raise click.UsageError(f"cancelling timer {msg_id} drops its message: add --yes")

    async def go() -> dict[str, Any]:
        async with Admin(namesrv) as a:
            return await a.cancel_timer(msg_id, broker=broker)

    d = _run(go)
    _emit([{"broker": d["broker"], "msgId": d["msgId"], "timerOffset": d["timerOffset"],
            "deliverAt": _iso(d["deliverMs"]), "deliverMs": d["deliverMs"]}],
          ["broker", "msgId", "timerOffset", "deliverAt"], output)


@timer.command("stats", context_settings=CONTEXT)
@click.option("-b", "--broker", help="Only this broker (by name).")
@namesrv_option
@output_option
def timer_stats(broker: str | None, namesrv: str, output: str | None) -> None:
    """Per broker: timers pending, scheduled, delivered, cancelled, and how late the
    deliveries were (p50, p99, max, in ms)."""
    async def go() -> list[dict[str, Any]]:
        async with Admin(namesrv) as a:
            return await a.timer_stats(broker=broker)

    rows = [{"broker": d["broker"], "pending": d.get("pending"),
             "scheduled": d.get("scheduled"), "delivered": d.get("delivered"),
             "cancelled": d.get("cancelled"), "dropped": d.get("dropped"),
             "late_p50_ms": d.get("latenessP50Ms"), "late_p99_ms": d.get("latenessP99Ms"),
             "late_max_ms": d.get("latenessMaxMs")} for d in _run(go)]
    _emit(rows, ["broker", "pending", "scheduled", "delivered", "cancelled", "dropped",
                 "late_p50_ms", "late_p99_ms", "late_max_ms"], output, title="timers")


@timer.command("list", context_settings=CONTEXT)
@click.option("--hours", type=click.IntRange(1, 168), default=24, show_default=True,
              help="Hours from the current one.")
@click.option("-b", "--broker", help="Only this broker (by name).")
@namesrv_option
@output_option
def timer_list(hours: int, broker: str | None, namesrv: str, output: str | None) -> None:
    """Pending timers per hour of delivery time, per broker (then those due later)."""
    async def go() -> list[dict[str, Any]]:
        async with Admin(namesrv) as a:
            return await a.timer_stats(broker=broker, hours=hours)

    rows = []
    for d in _run(go):
        start = _int(d.get("scheduleStartMs")) or 0
        for i, n in enumerate(d.get("perHour", [])):
            if n:
                rows.append({"broker": d["broker"], "hour": _iso(start + i * 3_600_000),
                             "hour_ms": start + i * 3_600_000, "pending": n})
        if d.get("later"):
            rows.append({"broker": d["broker"], "hour": "later", "hour_ms": None,
                         "pending": d["later"]})
    _emit(rows, ["broker", "hour", "pending"], output, title="pending timers per hour")


# ====================================================================== cluster


@click.group(context_settings=CONTEXT)
def cluster() -> None:
    """The brokers behind the NameServers."""


@cluster.command("list", context_settings=CONTEXT)
@namesrv_option
@output_option
def cluster_list(namesrv: str, output: str | None) -> None:
    """Every live broker: cluster, name, address, topics, messages stored so far."""
    async def go() -> list[dict[str, Any]]:
        async with Admin(namesrv, **connect_options()) as a:
            info = await a.cluster()
            rows = []
            for cname, names in sorted(info.clusterAddrTable.items()):
                for bname in names:
                    bd = info.brokerAddrTable.get(bname)
                    addr = bd.master_addr if bd else None
                    rt: dict[str, str] = {}
                    if addr:
                        try:
                            rt = await a.broker_runtime(addr)
                        except ClientError:
                            rt = {}
                    rows.append({"cluster": cname, "broker": bname, "address": addr,
                                 "topics": _int(rt.get("topics")), "messages_in":
                                 _int(rt.get("msgPutTotalTodayNow")), "version":
                                 rt.get("brokerVersionDesc"),
                                 "up_since": _iso(_int(rt.get("bootTimestamp")) or 0)})
            return rows
    _emit(_run(go), ["cluster", "broker", "address", "topics", "messages_in", "version",
                     "up_since"], output)


# ====================================================================== namesrv


@click.command(context_settings=CONTEXT)
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=9876, show_default=True)
@click.option("--broker-expiry", type=float, default=120.0, show_default=True,
              help="Seconds without a registration before a broker leaves the routes.")
@click.option("--log-level", default="WARNING", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="A server config file: its [tls] and [namesrv.tls] tables give the "
                   "NameServer TLS (docs/security.md).")
@click.option("--cluster-secret", envvar="FERRYMQ_CLUSTER_SECRET", default=None,
              help="Only brokers signing with this secret change the routes "
                   "([auth] cluster_secret; docs/security.md).")
def namesrv(host: str, port: int, broker_expiry: float, log_level: str,
            config_file: str | None, cluster_secret: str | None) -> None:
    """Run a NameServer alone (brokers join with `ferrymq serve --namesrv HOST:PORT`)."""
    import trio

    from .config import ConfigError, load_config
    from .logs import setup_logging
    from .namesrv import serve_namesrv
    from .tls import TlsServer
    setup_logging(log_level)
    tls = None
    if config_file:
        try:
            found = load_config(config_file).tls.get("namesrv")
            tls = TlsServer("namesrv", found) if found is not None else None
        except (ConfigError, OSError, ValueError) as exc:
            raise click.UsageError(str(exc)) from None

    async def run() -> None:
        async with trio.open_nursery() as n:
            bound = await n.start(functools.partial(
                serve_namesrv, host, port, {"broker_expiry_s": broker_expiry,
                                            "cluster_secret": cluster_secret}, tls=tls))
            click.echo(f"ferrymq: NameServer on {host}:{bound}; Ctrl-C stops", err=True)

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(run)


def register(main: click.Group) -> None:
    for cmd in (topic, group, produce, consume, offset, message, dlq, timer, cluster, namesrv):
        main.add_command(cmd)
