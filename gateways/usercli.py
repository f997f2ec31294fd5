"""``ferrymq user`` and ``ferrymq acl``: the access model's users, tokens, access keys and rules.

Two ways to reach a broker (docs/security.md, "Managing users and ACLs"):

- a running broker, through its HTTP admin API (``--url``, ``FERRYMQ_URL``), as a
  user who may (``--user``/``--password`` for Basic, or ``--token``; also
  ``FERRYMQ_USER``, ``FERRYMQ_PASSWORD``, ``FERRYMQ_TOKEN``): effective at once on
  every door;
- a stopped broker's data directory (``--data-dir`` or ``--config``): the change
  is written into its state log as the broker itself would, with the broker's
  own authority. This is how the first super user is made before ``[auth]
  enabled`` is switched on (the store's lock refuses it while a broker runs).
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import trio

from ..core.access import SYSTEM, PatternType, ResourceType, Rule
from ..core.broker import Broker
from ..core.errors import FerryError
from .config import ConfigError, load_config

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
T = TypeVar("T")


class Target:
    """Where the commands go: a URL (HTTP admin API) or a data directory (offline)."""

    def __init__(self, url: str | None, data_dir: str | None, config: str | None,
                 user: str | None, password: str | None, token: str | None) -> None:
        if (url is None) == (data_dir is None and config is None):
            raise click.UsageError("give --url (a running broker) or --data-dir/--config "
                                   "(a stopped one)")
        self.url = url.rstrip("/") if url else None
        self.data_dir, self.config = data_dir, config
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        elif user:
            if password is None:
                password = getpass.getpass(f"password of {user}: ")
            basic = base64.b64encode(f"{user}:{password}".encode()).decode()
            self.headers["Authorization"] = f"Basic {basic}"

    def http(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}{path}", data, self.headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            with contextlib.suppress(ValueError, AttributeError):
                detail = json.loads(detail).get("detail") or detail
            raise click.ClickException(f"{exc.code}: {detail}") from None
        except OSError as exc:
            raise click.ClickException(f"cannot reach {self.url}: {exc}") from None
        return json.loads(raw) if raw else None

    def offline(self, fn: Callable[[Broker], Awaitable[T]]) -> T:
        overrides = {"data_dir": self.data_dir} if self.data_dir else {}
        try:
            cfg = load_config(self.config, overrides=overrides)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from None

        async def go() -> T:
            async with Broker.open(cfg.broker) as b:
                return await fn(b)
        try:
            return trio.run(go)
        except (FerryError, OSError) as exc:
            raise click.ClickException(str(exc)) from None


def _target(f: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed((
        click.option("--url", envvar="FERRYMQ_URL", help="A running broker's HTTP door."),
        click.option("--user", envvar="FERRYMQ_USER", help="Log in as (HTTP Basic)."),
        click.option("--password", envvar="FERRYMQ_PASSWORD", help="Its password (prompted)."),
        click.option("--token", envvar="FERRYMQ_TOKEN", help="Or an API token."),
        click.option("--data-dir", help="A stopped broker's data directory."),
        click.option("--config", "config_file", type=click.Path(dir_okay=False),
                     help="A stopped broker's configuration file."),
    )):
        f = opt(f)
    return f


def _make(url: str | None, user: str | None, password: str | None, token: str | None,
          data_dir: str | None, config_file: str | None) -> Target:
    return Target(url, data_dir, config_file, user, password, token)


def _out(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=None, separators=(",", ":")))


def _new_password(given: str | None) -> str:
    if given is not None:
        return given
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("new password: ")
    if getpass.getpass("again: ") != first:
        raise click.ClickException("the passwords differ")
    return first


# ====================================================================== user


@click.group(context_settings=CONTEXT)
def user() -> None:
    """Users (SCRAM-SHA-256/512 verifiers, never passwords), API tokens, access keys."""


@user.command("add", context_settings=CONTEXT)
@click.argument("name")
@click.option("--new-password", help="The user's password (else prompted, or read from stdin).")
@click.option("--super", "super_user", is_flag=True, help="A super user: every check passes.")
@_target
def user_add(name: str, new_password: str | None, super_user: bool, **t: Any) -> None:
    """Create a user, or set its password (and --super flag) if it exists."""
    target = _make(**t)
    pw = _new_password(new_password)
    if target.url:
        _out(target.http("PUT", f"/v1/users/{_q(name)}",
                         {"password": pw, **({"super": True} if super_user else {})}))
        return
    target.offline(lambda b: b.put_user(name, password=pw,
                                        super_user=True if super_user else None,
                                        principal=SYSTEM))
    _out({"user": name})


@user.command("list", context_settings=CONTEXT)
@_target
def user_list(**t: Any) -> None:
    """Every user, one JSON line each."""
    target = _make(**t)
    if target.url:
        rows = target.http("GET", "/v1/users")["users"]
    else:
        async def go(b: Broker) -> list[dict[str, Any]]:
            return b.users(principal=SYSTEM)
        rows = target.offline(go)
    for r in rows:
        _out(r)


@user.command("delete", context_settings=CONTEXT)
@click.argument("name")
@_target
def user_delete(name: str, **t: Any) -> None:
    """Delete a user with its tokens and access keys."""
    target = _make(**t)
    if target.url:
        target.http("DELETE", f"/v1/users/{_q(name)}")
    elif not target.offline(lambda b: b.delete_user(name, principal=SYSTEM)):
        raise click.ClickException(f"no user {name}")


@user.command("token", context_settings=CONTEXT)
@click.argument("name")
@click.option("--label", default="", help="What the token is for.")
@_target
def user_token(name: str, label: str, **t: Any) -> None:
    """Make an API token for the user (HTTP bearer); printed once, stored as a hash."""
    target = _make(**t)
    if target.url:
        _out(target.http("POST", f"/v1/users/{_q(name)}/tokens", {"label": label}))
        return
    token = target.offline(lambda b: b.create_token(name, label, principal=SYSTEM))
    _out({"user": name, "token": token})


@user.command("access-key", context_settings=CONTEXT)
@click.argument("name")
@_target
def user_key(name: str, **t: Any) -> None:
    """Make a RocketMQ AccessKey/SecretKey pair for the user; the secret printed once."""
    target = _make(**t)
    if target.url:
        _out(target.http("POST", f"/v1/users/{_q(name)}/access-keys", {}))
        return
    ak, sk = target.offline(lambda b: b.create_access_key(name, principal=SYSTEM))
    _out({"user": name, "access_key": ak, "secret_key": sk})


@user.command("revoke", context_settings=CONTEXT)
@click.argument("what", type=click.Choice(["token", "access-key"]))
@click.argument("ident")
@_target
def user_revoke(what: str, ident: str, **t: Any) -> None:
    """Delete a token (by its listed id) or an access key."""
    target = _make(**t)
    if target.url:
        path = "/v1/tokens/" if what == "token" else "/v1/access-keys/"
        target.http("DELETE", path + _q(ident))
        return
    ok = target.offline(lambda b: b.delete_token(ident, principal=SYSTEM) if what == "token"
                        else b.delete_access_key(ident, principal=SYSTEM))
    if not ok:
        raise click.ClickException(f"no such {what}")


# ====================================================================== acl

_RESOURCES = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP,
              "transactional-id": ResourceType.TRANSACTIONAL_ID}


def _rules(principal: str, topic: str | None, group: str | None, txn: str | None,
           cluster: bool, pattern: str, operations: tuple[str, ...], deny: bool,
           host: str) -> list[Rule]:
    chosen = [(k, v) for k, v in (("topic", topic), ("group", group), ("transactional-id", txn))
              if v is not None]
    if len(chosen) + cluster != 1:
        raise click.UsageError("name one resource: --topic, --group, --transactional-id or "
                               "--cluster")
    kind, name = (ResourceType.CLUSTER, "") if cluster else (_RESOURCES[chosen[0][0]],
                                                              chosen[0][1] or "")
    if ":" not in principal:
        principal = f"User:{principal}"
    try:
        return [Rule.from_json({"principal": principal, "resource_type": kind.value,
                                "pattern_type": PatternType(pattern).value, "resource": name,
                                "operation": op, "permission": "deny" if deny else "allow",
                                "host": host}) for op in operations]
    except FerryError as exc:
        raise click.UsageError(str(exc)) from None


def _rule_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed((
        click.option("--principal", required=True,
                     help="User:<name>, a name, User:* (every user) or User:ANONYMOUS."),
        click.option("--topic"), click.option("--group"),
        click.option("--transactional-id", "txn"),
        click.option("--cluster", is_flag=True),
        click.option("--pattern", type=click.Choice(["literal", "prefixed", "mqtt"]),
                     default="literal", show_default=True,
                     help="How the name is read (* with literal: any)."),
        click.option("--operation", "operations", multiple=True, required=True,
                     type=click.Choice(["read", "write", "create", "delete", "describe", "alter",
                                        "all"])),
        click.option("--deny", is_flag=True, help="A deny rule (deny wins)."),
        click.option("--host", default="*", show_default=True,
                     help="Source addresses: *, an address or a CIDR range."),
    )):
        f = opt(f)
    return f


@click.group(context_settings=CONTEXT)
def acl() -> None:
    """ACL rules: principal x host x resource x operation x allow/deny."""


@acl.command("add", context_settings=CONTEXT)
@_rule_options
@_target
def acl_add(principal: str, topic: str | None, group: str | None, txn: str | None,
            cluster: bool, pattern: str, operations: tuple[str, ...], deny: bool, host: str,
            **t: Any) -> None:
    """Add rules (one per --operation), effective at once on every door."""
    rules = _rules(principal, topic, group, txn, cluster, pattern, operations, deny, host)
    target = _make(**t)
    if target.url:
        for r in target.http("POST", "/v1/acls", {"rules": [r.to_json() for r in rules]})[
                "rules"]:
            _out(r)
        return
    target.offline(lambda b: b.add_acls(rules, principal=SYSTEM))
    for r in rules:
        _out(r.to_json())


@acl.command("list", context_settings=CONTEXT)
@_target
def acl_list(**t: Any) -> None:
    """Every rule, one JSON line each."""
    target = _make(**t)
    if target.url:
        rows = target.http("GET", "/v1/acls")["rules"]
    else:
        async def go(b: Broker) -> list[dict[str, Any]]:
            return [r.to_json() for r in b.acls(principal=SYSTEM)]
        rows = target.offline(go)
    for r in rows:
        _out(r)


@acl.command("delete", context_settings=CONTEXT)
@_rule_options
@_target
def acl_delete(principal: str, topic: str | None, group: str | None, txn: str | None,
               cluster: bool, pattern: str, operations: tuple[str, ...], deny: bool, host: str,
               **t: Any) -> None:
    """Delete the rules these options describe; prints those that existed."""
    rules = _rules(principal, topic, group, txn, cluster, pattern, operations, deny, host)
    target = _make(**t)
    if target.url:
        gone = target.http("POST", "/v1/acls/delete", {"rules": [r.to_json() for r in rules]})[
            "rules"]
    else:
        async def go(b: Broker) -> list[dict[str, Any]]:
            return [r.to_json() for r in await b.delete_acls(rules, principal=SYSTEM)]
        gone = target.offline(go)
    for r in gone:
        _out(r)


def _q(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def register(main: click.Group) -> None:
    main.add_command(user)
    main.add_command(acl)
