"""Kafka's config APIs on the core's one validation module (core/topicconfig.py).

DescribeConfigs, AlterConfigs, IncrementalAlterConfigs, and the configs of a
CreateTopics request: requests in, ``Broker`` calls, responses out. What each
config means here (honoured, accepted without effect, read-only) is the core's
business; this module only speaks Kafka: resource types, config sources, the
version-dependent fields (synonyms from v1, types and documentation from v3).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...core import topicconfig as tc
from ...core.access import Principal
from ...core.broker import Broker, BrokerConfig
from ...core.errors import FerryError
from ...protocols.kafka import errors as ke
from .errors import kafka_error

RESOURCE_TOPIC, RESOURCE_BROKER, RESOURCE_BROKER_LOGGER = 2, 4, 8


def create_topic_configs(configs: Any) -> dict[str, str | None]:
    """A CreateTopics topic's ``configs`` as a mapping (a repeated name: the last wins)."""
    return {c.name: c.value for c in configs or ()}


def created_configs(R: Any, config: BrokerConfig, attributes: Mapping[str, str]
                    ) -> tuple[Any, ...]:
    """CreateTopics v5+: the new topic's configs (or, with validate_only, the configs it
    would have), as DescribeConfigs would list them."""
    return tuple(R.CreatableTopicConfigs(name=e.name, value=e.value, read_only=e.read_only,
                                         config_source=e.source, is_sensitive=e.sensitive)
                 for e in tc.describe(attributes, config))


def describe(R: Any, version: int, req: Any, broker: Broker, principal: Principal,
             broker_extra: Mapping[str, str], node_id: int) -> Any:
    """DescribeConfigs v0-4: every topic config (or the keys asked for) with value,
    source, read-only and synonyms; broker configs for the BROKER resource of this
    node (its id, or "" for the cluster default)."""
    out = []
    for r in req.resources:
        try:
            if r.resource_type == RESOURCE_TOPIC:
                entries = broker.describe_topic_configs(r.resource_name, principal=principal)
            elif r.resource_type == RESOURCE_BROKER:
                if r.resource_name not in ("", str(node_id)):
                    raise _Refused(ke.INVALID_REQUEST, f"no broker {r.resource_name!r}")
                entries = broker.describe_broker_configs(principal=principal, extra=broker_extra)
            elif r.resource_type == RESOURCE_BROKER_LOGGER:
                entries = []  # log levels are the server's logging configuration
            else:
                raise _Refused(ke.INVALID_REQUEST, f"unsupported resource type {r.resource_type}")
        except FerryError as exc:
            out.append(R.DescribeConfigsResult(
                error_code=kafka_error(exc), error_message=exc.detail,
                resource_type=r.resource_type, resource_name=r.resource_name))
            continue
        except _Refused as exc:
            out.append(R.DescribeConfigsResult(
                error_code=exc.code, error_message=exc.message,
                resource_type=r.resource_type, resource_name=r.resource_name))
            continue
        keys = r.configuration_keys
        synonyms = version >= 1 and req.include_synonyms
        docs = version >= 3 and req.include_documentation
        configs = tuple(R.DescribeConfigsResourceResult(
            name=e.name, value=e.value, read_only=e.read_only, is_default=e.is_default,
            config_source=e.source, is_sensitive=e.sensitive,
            synonyms=tuple(R.DescribeConfigsSynonym(name=n, value=v, source=src)
                           for n, v, src in e.synonyms) if synonyms else (),
            config_type=tc.TYPE_IDS.get(e.type, 0),
            documentation=e.doc if docs else None)
            for e in entries if not keys or e.name in keys)
        out.append(R.DescribeConfigsResult(error_code=ke.NONE, error_message=None,
                                           resource_type=r.resource_type,
                                           resource_name=r.resource_name, configs=configs))
    return R(results=tuple(out))


async def alter(R: Any, req: Any, broker: Broker, principal: Principal,
                incremental: bool) -> Any:
    """AlterConfigs (``incremental`` False: the given configs replace all of a topic's)
    and IncrementalAlterConfigs (SET, DELETE, APPEND, SUBTRACT). Broker configs are
    read-only here: they come from the server's configuration file."""
    out = []
    for r in req.resources:
        code, message = ke.NONE, None
        try:
            if r.resource_type == RESOURCE_TOPIC:
                if incremental:
                    await broker.alter_topic_configs(
                        r.resource_name, [(c.name, c.config_operation, c.value) for c in r.configs],
                        validate_only=req.validate_only, principal=principal)
                else:
                    await broker.alter_topic_configs(
                        r.resource_name, replace_with={c.name: c.value for c in r.configs},
                        validate_only=req.validate_only, principal=principal)
            elif r.resource_type in (RESOURCE_BROKER, RESOURCE_BROKER_LOGGER):
                code, message = ke.INVALID_REQUEST, \
                    "broker configs are read-only: set them in the server's configuration"
            else:
                code, message = ke.INVALID_REQUEST, f"unsupported resource type {r.resource_type}"
        except FerryError as exc:
            code, message = kafka_error(exc), exc.detail
        out.append(R.AlterConfigsResourceResponse(error_code=code, error_message=message,
                                                  resource_type=r.resource_type,
                                                  resource_name=r.resource_name))
    return R(responses=tuple(out))


class _Refused(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
