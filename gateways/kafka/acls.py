"""Kafka's ACL APIs (DescribeAcls 29, CreateAcls 30, DeleteAcls 31) on the broker's one
access model (core/access.py, docs/security.md).

A Kafka ACL binding is a rule of that model: (principal, host, operation, resource
pattern, allow/deny). The tables below translate Kafka's numeric enums; what Kafka
has and the model has not is refused with INVALID_REQUEST and a message rather than
stored as something else:

- resource types TOPIC, GROUP, CLUSTER (named ``kafka-cluster``: the model's one
  cluster resource) and TRANSACTIONAL_ID; DELEGATION_TOKEN and USER are refused;
- pattern types LITERAL (``*`` is every resource of the type) and PREFIXED; the
  model's MQTT-filter rules have no Kafka form and are not listed here;
- operations ALL, READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE, and Kafka's finer
  ones folded into the model's: DESCRIBE_CONFIGS into DESCRIBE, ALTER_CONFIGS into
  ALTER, IDEMPOTENT_WRITE into WRITE (a rule created with one is listed with the
  operation it became); CLUSTER_ACTION and the others are refused.

The broker's checks (CLUSTER DESCRIBE to list, CLUSTER ALTER to change) are the
core's, as for ``ferrymq acl`` and the HTTP admin API: one place decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...core.access import (
    CLUSTER,
    GROUP,
    LITERAL,
    PREFIXED,
    TOPIC,
    TRANSACTIONAL_ID,
    WILDCARD,
    Operation,
    PatternType,
    Principal,
    ResourceType,
    Rule,
)
from ...core.broker import Broker
from ...core.errors import FerryError, InvalidArgument
from ...protocols.kafka import errors as ke
from .errors import kafka_error

CLUSTER_NAME = "kafka-cluster"  # Kafka's name of its one cluster resource

# Kafka's enums (org.apache.kafka.common.resource / acl): 1 is ANY in filters.
ANY = 1
RESOURCE_TYPES: dict[int, ResourceType] = {2: TOPIC, 3: GROUP, 4: CLUSTER, 5: TRANSACTIONAL_ID}
RESOURCE_CODES = {v: k for k, v in RESOURCE_TYPES.items()}
MATCH = 2  # a pattern filter: every rule that applies to the named resource
PATTERN_TYPES: dict[int, PatternType] = {3: LITERAL, 4: PREFIXED}
PATTERN_CODES = {v: k for k, v in PATTERN_TYPES.items()}
OPERATIONS: dict[int, Operation] = {
    2: Operation.ALL, 3: Operation.READ, 4: Operation.WRITE, 5: Operation.CREATE,
    6: Operation.DELETE, 7: Operation.ALTER, 8: Operation.DESCRIBE,
    10: Operation.DESCRIBE, 11: Operation.ALTER, 12: Operation.WRITE,
}
OPERATION_CODES = {Operation.ALL: 2, Operation.READ: 3, Operation.WRITE: 4, Operation.CREATE: 5,
                   Operation.DELETE: 6, Operation.ALTER: 7, Operation.DESCRIBE: 8}
DENY, ALLOW = 2, 3


class _Refused(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _kafka_name(rule: Rule) -> str:
    return CLUSTER_NAME if rule.kind is CLUSTER else rule.name


def rule_from_binding(resource_type: int, name: str, pattern: int, principal: str, host: str,
                      operation: int, permission: int) -> Rule:
    """The model's rule for one Kafka ACL binding. Raises _Refused."""
    kind = RESOURCE_TYPES.get(resource_type)
    if kind is None:
        raise _Refused(ke.INVALID_REQUEST, f"resource type {resource_type} is not supported")
    pat = PATTERN_TYPES.get(pattern)
    if pat is None:
        raise _Refused(ke.INVALID_REQUEST, f"pattern type {pattern} cannot be stored")
    op = OPERATIONS.get(operation)
    if op is None:
        raise _Refused(ke.INVALID_REQUEST, f"operation {operation} is not supported")
    if permission not in (ALLOW, DENY):
        raise _Refused(ke.INVALID_REQUEST, f"permission type {permission} cannot be stored")
    if kind is CLUSTER:
        if name != CLUSTER_NAME:
            raise _Refused(ke.INVALID_REQUEST, f"the cluster resource is named {CLUSTER_NAME}")
        name = ""
    try:
        return Rule(principal, kind, pat, name, op, permission == ALLOW, host or WILDCARD)
    except InvalidArgument as exc:
        raise _Refused(ke.INVALID_REQUEST, str(exc)) from None


def _matches(rule: Rule, f: Any) -> bool:
    """Whether ``rule`` passes a Describe/Delete filter (Kafka's AclBindingFilter)."""
    if rule.pattern not in PATTERN_CODES:
        return False  # an MQTT-filter rule: no Kafka form
    rtype = f.resource_type_filter
    if rtype != ANY and RESOURCE_TYPES.get(rtype) is not rule.kind:
        return False
    name, ptype = f.resource_name_filter, f.pattern_type_filter
    rname = _kafka_name(rule)
    if ptype == MATCH:
        if name is not None and not (
                rname == name or (rule.pattern is LITERAL and rname == WILDCARD)
                or (rule.pattern is PREFIXED and name.startswith(rname))):
            return False
    else:
        if ptype != ANY and PATTERN_TYPES.get(ptype) is not rule.pattern:
            return False
        if name is not None and rname != name:
            return False
    if f.principal_filter is not None and rule.principal != f.principal_filter:
        return False
    if f.host_filter is not None and rule.host != f.host_filter:
        return False
    if f.operation != ANY and OPERATIONS.get(f.operation) is not rule.operation:
        return False
    perm = ALLOW if rule.allow else DENY
    return f.permission_type in (ANY, perm)


def _check_filter(f: Any) -> None:
    """Kafka refuses filters that can match nothing meaningful (UNKNOWN values)."""
    for value, what in ((f.resource_type_filter, "resource type"),
                        (f.pattern_type_filter, "pattern type"), (f.operation, "operation"),
                        (f.permission_type, "permission type")):
        if value == 0:
            raise _Refused(ke.INVALID_REQUEST, f"a filter's {what} may not be UNKNOWN")


def _kafka_rules(broker: Broker, principal: Principal) -> list[Rule]:
    return [r for r in broker.acls(principal=principal) if r.pattern in PATTERN_CODES]


def describe(R: Any, req: Any, broker: Broker, principal: Principal) -> Any:
    try:
        _check_filter(req)
        rules = [r for r in _kafka_rules(broker, principal) if _matches(r, req)]
    except _Refused as exc:
        return R(error_code=exc.code, error_message=exc.message, resources=())
    except FerryError as exc:
        return R(error_code=kafka_error(exc), error_message=str(exc), resources=())
    by_resource: dict[tuple[int, str, int], list[Rule]] = {}
    for r in rules:
        key = (RESOURCE_CODES[r.kind], _kafka_name(r), PATTERN_CODES[r.pattern])
        by_resource.setdefault(key, []).append(r)
    return R(error_code=ke.NONE, error_message=None, resources=tuple(
        R.DescribeAclsResource(resource_type=t, resource_name=n, pattern_type=p, acls=tuple(
            R.AclDescription(principal=r.principal, host=r.host,
                             operation=OPERATION_CODES[r.operation],
                             permission_type=ALLOW if r.allow else DENY)
            for r in sorted(acls, key=lambda r: r.id)))
        for (t, n, p), acls in sorted(by_resource.items())))


async def create(R: Any, req: Any, broker: Broker, principal: Principal) -> Any:
    """Each creation succeeds or fails alone, as Kafka answers them."""
    results = []
    for c in req.creations:
        try:
            rule = rule_from_binding(c.resource_type, c.resource_name, c.resource_pattern_type,
                                     c.principal, c.host, c.operation, c.permission_type)
            await broker.add_acls([rule], principal=principal)
        except _Refused as exc:
            results.append(R.AclCreationResult(error_code=exc.code, error_message=exc.message))
        except FerryError as exc:
            results.append(R.AclCreationResult(error_code=kafka_error(exc),
                                               error_message=str(exc)))
        else:
            results.append(R.AclCreationResult(error_code=ke.NONE, error_message=None))
    return R(results=tuple(results))


async def delete(R: Any, req: Any, broker: Broker, principal: Principal) -> Any:
    """Every rule each filter matches is deleted; the answer lists them per filter."""
    out = []
    for f in req.filters:
        try:
            _check_filter(f)
            matched = [r for r in _kafka_rules(broker, principal) if _matches(r, f)]
            deleted: Sequence[Rule] = await broker.delete_acls(matched, principal=principal) \
                if matched else []
        except _Refused as exc:
            out.append(R.DeleteAclsFilterResult(error_code=exc.code, error_message=exc.message,
                                                matching_acls=()))
            continue
        except FerryError as exc:
            out.append(R.DeleteAclsFilterResult(error_code=kafka_error(exc),
                                                error_message=str(exc), matching_acls=()))
            continue
        out.append(R.DeleteAclsFilterResult(error_code=ke.NONE, error_message=None,
                                            matching_acls=tuple(
            R.DeleteAclsMatchingAcl(
                error_code=ke.NONE, error_message=None, resource_type=RESOURCE_CODES[r.kind],
                resource_name=_kafka_name(r), pattern_type=PATTERN_CODES[r.pattern],
                principal=r.principal, host=r.host, operation=OPERATION_CODES[r.operation],
                permission_type=ALLOW if r.allow else DENY)
            for r in deleted)))
    return R(filter_results=tuple(out))
