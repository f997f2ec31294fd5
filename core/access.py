"""Who is asking: the principal every Broker call carries, and the one access decision.

Each door turns its connection (or request) into a ``Principal``: the Kafka door
its SASL user, the HTTP door its bearer token, the MQTT door its user name, and
``anonymous(peer)`` wherever nobody logged in. Every public ``Broker`` call that
produces, consumes, commits, administers, pops, transacts, or touches timers or
dead letters takes it (``principal=``) and asks ``AccessControl.check`` once per
resource it touches, in one method (``Broker._authorize``); docs/architecture.md
has the table of which call checks which resource and operation.

``AccessControl`` is the one access model (docs/security.md): rules of
principal x host x resource (type; literal name, prefix, any, or an MQTT topic
filter matched against a message's address) x operation x allow/deny, deny
winning, super users bypassing. With ``[auth] enabled`` off it allows
everything (except for a door that enforces its legacy rule file, the MQTT ACL
file); with it on ``ANONYMOUS`` is only as good as the ACLs granted to
``User:ANONYMOUS``: the default a caller gets when it passes no principal is
fail-closed.

The broker's own work never meets a client's principal: timer deliveries,
retries, transaction commits, pop revives and dead-lettering run on the core's
internal write path (``core/paths.py``), not through the facade. A door's own
bookkeeping through the facade (route registration, replaying its state at
start-up) passes ``SYSTEM``.

Resources are a kind and a name, passed as two arguments rather than a value so
that the produce path, which checks once per message, allocates nothing.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..protocols.mqtt.topics import filter_covers, filter_matches, valid_topic_filter
from .addresses import broker_topic
from .errors import InvalidArgument, PermissionDenied
from .metadata import DLQ_PREFIX, RETRY_PREFIX


class ResourceType(enum.Enum):
    """What a call touches (Kafka's resource types; RocketMQ ACL 2.0 has the same three
    and no transactional id)."""

    # Members are singletons compared by identity: hashing them by identity too keeps
    # the decision cache's key hashing in C (Enum's own __hash__ is a Python call).
    __hash__ = object.__hash__

    TOPIC = "topic"
    GROUP = "group"  # a consumer group
    TRANSACTIONAL_ID = "transactional_id"  # a producer group's transactions
    CLUSTER = "cluster"  # the broker itself: its statistics, timers, transactions


class Operation(enum.Enum):
    """What a call does to a resource (Kafka's operations; RocketMQ's pub/sub are WRITE
    and READ, its create/update/delete/get/list are CREATE, ALTER, DELETE, DESCRIBE)."""

    READ = "read"
    WRITE = "write"
    CREATE = "create"
    DELETE = "delete"
    DESCRIBE = "describe"
    ALTER = "alter"
    ALL = "all"  # in rules only: every operation

    __hash__ = object.__hash__  # as ResourceType's


TOPIC, GROUP, TRANSACTIONAL_ID, CLUSTER = (ResourceType.TOPIC, ResourceType.GROUP,
                                           ResourceType.TRANSACTIONAL_ID, ResourceType.CLUSTER)
READ, WRITE, CREATE, DELETE, DESCRIBE, ALTER = (Operation.READ, Operation.WRITE,
                                                Operation.CREATE, Operation.DELETE,
                                                Operation.DESCRIBE, Operation.ALTER)
ALL = Operation.ALL

# How a principal proved who it is.
MECHANISM_ANONYMOUS = "anonymous"  # nobody logged in
MECHANISM_INTERNAL = "internal"  # the broker itself (SYSTEM)
MECHANISM_SASL_PLAIN = "SASL/PLAIN"  # Kafka SASL PLAIN (RFC 4616)
MECHANISM_BEARER = "bearer"  # an HTTP bearer token (RFC 6750)
MECHANISM_MQTT_PASSWORD = "mqtt-password"  # MQTT CONNECT user name and password
MECHANISM_SCRAM = "SASL/SCRAM"  # Kafka SASL SCRAM-SHA-256/512 (RFC 5802)
MECHANISM_BASIC = "basic"  # HTTP Basic (RFC 7617)
MECHANISM_SIGNATURE = "rocketmq-signature"  # RocketMQ AccessKey + HMAC signature


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a call is made for: a name, how that name was proven (``mechanism``), and the
    peer address it came from ("host:port", or "host" where a door knows no port;
    None for the broker's own calls). The name is a user of the one model
    (core/credentials.py) whichever mechanism proved it: rules name users, not
    mechanisms."""

    name: str
    mechanism: str
    peer: str | None = None
    door: str | None = None  # which door it came through (legacy rule files are per door)
    client_id: str | None = None  # the MQTT client id (``%c`` in MQTT ACL patterns)

    def __post_init__(self) -> None:
        if not self.name or not self.mechanism:
            raise ValueError("a principal needs a name and a mechanism")

    @property
    def anonymous(self) -> bool:
        return self.mechanism == MECHANISM_ANONYMOUS


ANONYMOUS_NAME = "ANONYMOUS"  # Kafka's User:ANONYMOUS
ANONYMOUS = Principal(ANONYMOUS_NAME, MECHANISM_ANONYMOUS)
"""Nobody in particular: the default of every Broker call (fail-closed once ACLs exist)."""

SYSTEM = Principal("ferrymq", MECHANISM_INTERNAL)
"""The broker acting for itself through the facade (a door's own bookkeeping)."""


def anonymous(peer: str | None, door: str | None = None) -> Principal:
    """The anonymous principal of a connection from ``peer`` (through ``door``)."""
    if peer is None and door is None:
        return ANONYMOUS
    return Principal(ANONYMOUS_NAME, MECHANISM_ANONYMOUS, peer, door)




class PatternType(enum.Enum):
    """How a rule names its resources (Kafka's pattern types, plus MQTT filters)."""

    LITERAL = "literal"  # the name itself; "*" is every resource of the type (ANY)
    PREFIXED = "prefixed"  # every name starting with it
    MQTT = "mqtt"  # topics only: an MQTT topic filter matched against a message's address


LITERAL, PREFIXED, MQTT = PatternType.LITERAL, PatternType.PREFIXED, PatternType.MQTT
WILDCARD = "*"
ANY_USER = "User:*"  # every authenticated user (not the anonymous one: name it explicitly)


def principal_key(name: str) -> str:
    """A principal's name in rules: Kafka's ``User:<name>``."""
    return "User:" + name


def peer_host(peer: str | None) -> str | None:
    """The host part of a principal's peer ("1.2.3.4:5", "[::1]:5", "::1" or "host")."""
    if not peer:
        return None
    if peer.startswith("["):
        return peer[1:].partition("]")[0]
    if peer.count(":") == 1:
        return peer.partition(":")[0]
    return peer


@dataclass(frozen=True, slots=True)
class Rule:
    """One access rule. ``principal`` is ``User:<name>``, ``User:*`` (every
    authenticated user) or ``User:ANONYMOUS``; ``host`` is ``*``, an address or a
    CIDR range; ``name`` is read by ``pattern``. With ``substitute`` (an MQTT ACL
    file's ``pattern`` line) ``%u`` and ``%c`` in the name stand for the user and
    the MQTT client id; a user name or client id holding a wildcard or a ``/``
    never matches such a rule."""

    principal: str
    kind: ResourceType
    pattern: PatternType
    name: str
    operation: Operation
    allow: bool
    host: str = WILDCARD
    substitute: bool = False

    def __post_init__(self) -> None:
        if not self.principal.startswith("User:") or len(self.principal) <= 5:
            raise InvalidArgument(f"a rule's principal is User:<name>, not {self.principal!r}")
        if self.pattern is MQTT:
            if self.kind is not TOPIC:
                raise InvalidArgument("MQTT filter rules name topics only")
            probe = self.name.replace("%u", "u").replace("%c", "c")
            if not valid_topic_filter(probe):
                raise InvalidArgument(f"not an MQTT topic filter: {self.name!r}")
        elif not self.name and self.kind is not CLUSTER:
            raise InvalidArgument("a rule names a resource (\"*\" for any)")
        if self.host != WILDCARD:
            try:
                ipaddress.ip_network(self.host, strict=False)
            except ValueError:
                raise InvalidArgument(f"a rule's host is *, an address or a CIDR range, "
                                      f"not {self.host!r}") from None

    @property
    def id(self) -> str:
        """Stable identity: the same rule added twice is one rule."""
        text = "\x00".join((self.principal, self.kind.value, self.pattern.value, self.name,
                            self.operation.value, "allow" if self.allow else "deny", self.host,
                            "1" if self.substitute else ""))
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def to_wire(self) -> tuple[str, str, str, str, str, bool, str, bool]:
        return (self.principal, self.kind.value, self.pattern.value, self.name,
                self.operation.value, self.allow, self.host, self.substitute)

    @classmethod
    def from_wire(cls, v: Iterable[object]) -> Rule:
        p, kind, pattern, name, op, allow, host, sub = v
        return cls(str(p), ResourceType(kind), PatternType(pattern), str(name), Operation(op),
                   bool(allow), str(host), bool(sub))

    def to_json(self) -> dict[str, object]:
        return {"principal": self.principal, "resource_type": self.kind.value,
                "pattern_type": self.pattern.value, "resource": self.name,
                "operation": self.operation.value,
                "permission": "allow" if self.allow else "deny", "host": self.host,
                **({"substitute": True} if self.substitute else {}), "id": self.id}

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> Rule:
        try:
            perm = str(doc.get("permission", "allow")).lower()
            if perm not in ("allow", "deny"):
                raise ValueError(perm)
            principal = str(doc["principal"])
            if ":" not in principal:
                principal = principal_key(principal)
            return cls(principal, ResourceType(str(doc["resource_type"]).lower()),
                       PatternType(str(doc.get("pattern_type", "literal")).lower()),
                       str(doc.get("resource", "")), Operation(str(doc["operation"]).lower()),
                       perm == "allow", str(doc.get("host", WILDCARD)),
                       bool(doc.get("substitute", False)))
        except (KeyError, ValueError, TypeError) as exc:
            raise InvalidArgument(f"not an ACL rule: {exc}") from None


_GROUP_TOPICS = (RETRY_PREFIX, DLQ_PREFIX)
_IMPLIES_DESCRIBE = frozenset({READ, WRITE, DELETE, ALTER, CREATE})  # CREATE: FerryMQ
_WILD = ("+", "#")


def _filter_for(name: str, address: str | None, partial: bool) -> str | None:
    """The MQTT filter a target stands for: an address, a subscription filter, or a
    whole topic (``level/#``: every address inside it). None: a topic with no name."""
    if address is not None:
        return address
    return f"{name}/#" if name else None


def _mqtt_covers(rule_filter: str, name: str, target: str) -> bool:
    """Whether a rule's filter matches every address of ``target`` (whose first level
    is the broker topic ``name``, escaped)."""
    if filter_covers(rule_filter, target):
        return True
    # A topic whose name is escaped from its first level: compare escaped first levels.
    first, _, rest = rule_filter.partition("/")
    tfirst, _, trest = target.partition("/")
    if first in _WILD or tfirst in _WILD or not name:
        return False
    return broker_topic(first) == name and broker_topic(tfirst) == name and filter_covers(
        "x/" + rest if rest else "x", "x/" + trest if trest else "x")


def _mqtt_touches(rule_filter: str, name: str, target: str) -> bool:
    """Whether some address is matched by both the rule's filter and ``target``."""
    f, t = rule_filter.split("/"), target.split("/")
    if f[0] not in _WILD and t[0] not in _WILD and broker_topic(f[0]) != broker_topic(t[0]):
        return False
    for i in range(max(len(f), len(t))):
        a = f[i] if i < len(f) else None
        b = t[i] if i < len(t) else None
        if a == "#" or b == "#":
            return True
        if a is None or b is None:
            return False
        if i == 0 or a == "+" or b == "+":
            continue
        if a != b:
            return False
    return True


class AccessControl:
    """The one access decision. ``check`` returns when ``principal`` may do ``operation``
    on the resource, and raises ``PermissionDenied`` otherwise (every door maps it:
    Kafka TOPIC/GROUP/CLUSTER_AUTHORIZATION_FAILED, RocketMQ NO_PERMISSION, HTTP 403,
    MQTT NOT_AUTHORIZED); the exception's ``resource`` says which kind was refused.

    Rules come from the state log (``set_rule``, through the Broker's ACL calls) and
    from rule files a door loads at start (``load_static``). Decisions are cached
    per (principal, host, resource, operation) until a rule or a super-user flag
    changes: a stream of produce requests to one topic walks the rules once."""

    CACHE_MAX = 100_000
    # True while nothing is enforced for anybody (auth off, no door's rule file): every
    # check would return, so the produce path skips asking (one attribute test per put
    # instead of four calls). Recomputed whenever an input changes; False (ask) for
    # whatever did not compute it.
    open = False

    def __init__(self, enabled: bool = False, super_users: Iterable[str] = ()) -> None:
        self.enforced_doors: set[str] = set()  # doors whose file rules hold with auth off
        self.enabled = enabled  # sets ``open``
        self.super_users = frozenset(super_users)
        self.is_super: Callable[[str], bool] = lambda name: False
        self.rules: dict[str, Rule] = {}  # id -> rule: the state log's
        self.static: dict[str, list[Rule]] = {}  # source -> rules loaded from files
        self.generation = 0
        self._index: dict[str, list[Rule]] = {}
        self._cache: dict[tuple[object, ...], bool] = {}
        self._reindex()

    @property
    def enabled(self) -> bool:
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = value
        self.open = not value and not self.enforced_doors

    # ------------------------------------------------------------ rules

    def set_rule(self, rule_id: str, rule: Rule | None) -> None:
        if rule is None:
            self.rules.pop(rule_id, None)
        else:
            self.rules[rule_id] = rule
        self._reindex()

    def load_static(self, source: str, rules: list[Rule], enforce_door: str | None) -> None:
        self.static[source] = list(rules)
        if enforce_door:
            self.enforced_doors.add(enforce_door)
            self.open = False
        self._reindex()

    def changed(self) -> None:
        """Something a decision depends on changed (a super-user flag): forget them."""
        self.generation += 1
        self._cache.clear()

    def _reindex(self) -> None:
        index: dict[str, list[Rule]] = {}
        for r in [*self.rules.values(), *(r for rs in self.static.values() for r in rs)]:
            index.setdefault(r.principal, []).append(r)
        self._index = index
        self.changed()

    def all_rules(self) -> list[Rule]:
        return [*self.rules.values(), *(r for rs in self.static.values() for r in rs)]

    # ------------------------------------------------------------ decisions

    def enforced(self, principal: Principal) -> bool:
        if principal.mechanism == MECHANISM_INTERNAL:
            return False
        return self._enabled or (principal.door is not None and
                                principal.door in self.enforced_doors)

    def check(self, principal: Principal, kind: ResourceType, name: str,
              operation: Operation, address: str | None = None, partial: bool = False) -> None:
        """Return, or raise PermissionDenied. ``address``: a message's address inside
        topic ``name`` (an MQTT topic name), or with ``partial`` an MQTT subscription
        filter (allowed when a grant covers it, refused when a deny covers it whole;
        its deliveries are judged one by one). Without either a topic is judged
        whole: a deny on any part of it refuses it (secure by default)."""
        if not self.allows(principal, kind, name, operation, address, partial):
            exc = PermissionDenied(f"{principal_key(principal.name)} may not "
                                   f"{operation.value} {kind.value} {name or address or ''}"
                                   .rstrip())
            exc.resource = kind.value  # type: ignore[attr-defined]
            raise exc

    def allows(self, principal: Principal, kind: ResourceType, name: str,
               operation: Operation, address: str | None = None, partial: bool = False) -> bool:
        if not self.enforced(principal):
            return True
        if kind is TOPIC and name.startswith(_GROUP_TOPICS):
            # A group's retry and dead-letter topics are the group's (RocketMQ's ACL
            # checks them as the group): consuming and sending back are READ on it.
            prefix = RETRY_PREFIX if name.startswith(RETRY_PREFIX) else DLQ_PREFIX
            kind, name = GROUP, name[len(prefix):]
            if operation in (WRITE, CREATE, DESCRIBE):
                operation = READ
        key = (principal.name, principal.mechanism == MECHANISM_ANONYMOUS, principal.peer,
               principal.client_id, principal.door, kind, name, operation, address, partial)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._decide(principal, kind, name, operation, address, partial)
            if len(self._cache) >= self.CACHE_MAX:
                self._cache.clear()
            self._cache[key] = hit
        return hit

    def _decide(self, principal: Principal, kind: ResourceType, name: str,
                operation: Operation, address: str | None, partial: bool) -> bool:
        anon = principal.anonymous
        if not anon and (principal.name in self.super_users or self.is_super(principal.name)):
            return True
        if not self._enabled and principal.door in self.enforced_doors:
            # Auth off, a door's legacy rule file on: only that door's rules apply.
            sources = [r for src, rs in self.static.items() if src.startswith(principal.door or "")
                       for r in rs]
            candidates = [r for r in sources if r.principal in (
                ("User:ANONYMOUS",) if anon else (ANY_USER, principal_key(principal.name)))]
        else:
            candidates = list(self._index.get(principal_key(principal.name), ()))
            if not anon:
                candidates += self._index.get(ANY_USER, ())
        host = peer_host(principal.peer)
        allowed = False
        for r in candidates:
            if r.kind is not kind:
                continue
            op = r.operation
            if op is not ALL and op is not operation and not (
                    r.allow and operation is DESCRIBE and op in _IMPLIES_DESCRIBE):
                continue
            if r.host != WILDCARD and not _host_in(host, r.host):
                continue
            if r.allow and allowed:
                continue  # a grant is known: only a deny can change the answer
            if not self._resource_matches(r, principal, name, address, partial):
                continue
            if not r.allow:
                return False
            allowed = True
        return allowed

    @staticmethod
    def _resource_matches(r: Rule, principal: Principal, name: str, address: str | None,
                          partial: bool) -> bool:
        if r.pattern is LITERAL:
            return r.name == WILDCARD or r.name == name or r.kind is CLUSTER
        if r.pattern is PREFIXED:
            return name.startswith(r.name)
        rule_filter = r.name
        if r.substitute:
            for value, mark in ((principal.name, "%u"), (principal.client_id or "", "%c")):
                if mark in rule_filter:
                    if not value or any(ch in value for ch in "/+#") or principal.anonymous:
                        return False
                    rule_filter = rule_filter.replace(mark, value)
        target = _filter_for(name, address, partial)
        if target is None:
            return False
        if address is not None and not partial:
            return filter_matches(rule_filter, address)
        if r.allow or partial:
            return _mqtt_covers(rule_filter, name, target)
        return _mqtt_touches(rule_filter, name, target)


def _host_in(host: str | None, rule_host: str) -> bool:
    if host is None:
        return False
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(rule_host, strict=False)
    except ValueError:
        return host == rule_host
