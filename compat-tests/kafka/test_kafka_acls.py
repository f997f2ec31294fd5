"""Kafka's ACL APIs through confluent-kafka's AdminClient (as kafka-acls.sh uses them):
rules created, described and deleted by a super user are the broker's one access
model (docs/security.md), so they take effect on every door at once; a user without
CLUSTER ALTER may not change them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ADMIN, BOB = ("admin", "admin-secret"), ("bob", "bob-secret")


@pytest.fixture
def bootstrap(start_broker, tmp_path: Path) -> str:
    conf = tmp_path / "b.toml"
    conf.write_text("segment_size = 8388608\n[auth]\nenabled = true\n")
    data = tmp_path / "broker"
    where = ("--config", str(conf), "--data-dir", str(data))
    for args in (("user", "add", ADMIN[0], "--new-password", ADMIN[1], "--super"),
                 ("user", "add", BOB[0], "--new-password", BOB[1])):
        out = subprocess.run([sys.executable, "-m", "ferrymq.gateways", *args, *where],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
    b = start_broker("kafka", extra_args=("--config", str(conf)), data_dir=data)
    return b.address("kafka")


def _conf(bootstrap: str, user: tuple[str, str]) -> dict[str, str]:
    return {"bootstrap.servers": bootstrap, "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": user[0],
            "sasl.password": user[1]}


def _produce(bootstrap: str, user: tuple[str, str], topic: str) -> list[object]:
    from confluent_kafka import Producer

    errors: list[object] = []
    p = Producer({**_conf(bootstrap, user), "message.timeout.ms": 5000})
    p.produce(topic, b"x", on_delivery=lambda err, msg: errors.append(err))
    p.flush(15)
    return errors


def test_acls_created_described_and_deleted_through_kafka_rule_every_door(bootstrap) -> None:
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import (
        AclBinding,
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        AdminClient,
        NewTopic,
        ResourcePatternType,
        ResourceType,
    )

    admin = AdminClient(_conf(bootstrap, ADMIN))
    admin.create_topics([NewTopic("acl-t", 1)])["acl-t"].result(30)
    # bob has no grant yet: refused
    errors = _produce(bootstrap, BOB, "acl-t")
    assert errors and errors[0] is not None
    assert errors[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED

    grant = AclBinding(ResourceType.TOPIC, "acl-", ResourcePatternType.PREFIXED, "User:bob", "*",
                       AclOperation.WRITE, AclPermissionType.ALLOW)
    for f in admin.create_acls([grant]).values():
        f.result(30)
    assert _produce(bootstrap, BOB, "acl-t") == [None]

    described = admin.describe_acls(AclBindingFilter(
        ResourceType.ANY, None, ResourcePatternType.ANY, None, None, AclOperation.ANY,
        AclPermissionType.ANY)).result(30)
    assert [(b.restype, b.name, b.resource_pattern_type, b.principal, b.operation,
             b.permission_type) for b in described] == [
        (ResourceType.TOPIC, "acl-", ResourcePatternType.PREFIXED, "User:bob", AclOperation.WRITE,
         AclPermissionType.ALLOW)]
    # MATCH finds the prefixed rule that applies to a topic name
    matched = admin.describe_acls(AclBindingFilter(
        ResourceType.TOPIC, "acl-t", ResourcePatternType.MATCH, None, None, AclOperation.ANY,
        AclPermissionType.ANY)).result(30)
    assert len(matched) == 1

    # bob may not change the rules (CLUSTER ALTER)
    bob = AdminClient(_conf(bootstrap, BOB))
    with pytest.raises(KafkaException) as refused:
        for f in bob.create_acls([AclBinding(
                ResourceType.TOPIC, "*", ResourcePatternType.LITERAL, "User:bob", "*",
                AclOperation.ALL, AclPermissionType.ALLOW)]).values():
            f.result(30)
    assert refused.value.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED

    # an unsupported binding is refused, not stored as something else
    with pytest.raises(KafkaException):
        for f in admin.create_acls([AclBinding(
                ResourceType.BROKER, "kafka-cluster", ResourcePatternType.LITERAL, "User:bob",
                "*", AclOperation.CLUSTER_ACTION, AclPermissionType.ALLOW)]).values():
            f.result(30)

    deleted = admin.delete_acls([AclBindingFilter(
        ResourceType.TOPIC, None, ResourcePatternType.ANY, "User:bob", None, AclOperation.ANY,
        AclPermissionType.ANY)])
    assert [len(f.result(30)) for f in deleted.values()] == [1]
    errors = _produce(bootstrap, BOB, "acl-t")
    assert errors[0] is not None and errors[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_scram_credentials_set_described_and_deleted_through_kafka(bootstrap) -> None:
    """AlterUserScramCredentials / DescribeUserScramCredentials (what kafka-configs
    --entity-type users sends): a credential set by the admin client logs in at once on
    the same broker; describing shows mechanisms and iterations, never secrets; bob may
    not change credentials; a deleted credential no longer logs in."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import (
        AdminClient,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialDeletion,
        UserScramCredentialUpsertion,
    )

    admin = AdminClient(_conf(bootstrap, ADMIN))
    carol = ("carol", "carol-secret")
    futures = admin.alter_user_scram_credentials([UserScramCredentialUpsertion(
        "carol", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), carol[1].encode())])
    futures["carol"].result(30)
    # carol logs in with SCRAM-SHA-512 at once (and is refused the topic: no grant)
    errors = _produce(bootstrap, carol, "scram-t")
    assert errors and errors[0] is not None
    assert errors[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, errors

    described = admin.describe_user_scram_credentials(["carol", "admin"])
    carol_info = described["carol"].result(30)
    assert [(c.mechanism, c.iterations) for c in carol_info.scram_credential_infos] == [
        (ScramMechanism.SCRAM_SHA_512, 8192)]
    assert {c.mechanism for c in described["admin"].result(30).scram_credential_infos} == {
        ScramMechanism.SCRAM_SHA_256, ScramMechanism.SCRAM_SHA_512}
    with pytest.raises(KafkaException) as nobody:
        admin.describe_user_scram_credentials(["nobody"])["nobody"].result(30)
    assert nobody.value.args[0].code() == KafkaError.RESOURCE_NOT_FOUND

    # too few iterations: refused, nothing changed
    with pytest.raises(KafkaException) as weak:
        admin.alter_user_scram_credentials([UserScramCredentialUpsertion(
            "carol", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 100), b"weak")]
        )["carol"].result(30)
    assert weak.value.args[0].code() == KafkaError.UNACCEPTABLE_CREDENTIAL

    # bob has no CLUSTER ALTER / DESCRIBE
    bobs = AdminClient(_conf(bootstrap, BOB))
    with pytest.raises(KafkaException) as denied:
        bobs.alter_user_scram_credentials([UserScramCredentialDeletion(
            "carol", ScramMechanism.SCRAM_SHA_512)])["carol"].result(30)
    assert denied.value.args[0].code() == KafkaError.CLUSTER_AUTHORIZATION_FAILED
    # (bob's describe is refused too, answered exactly as Kafka answers it — which
    # librdkafka's admin client crashes on: tests/kafka/test_kafka_scram_admin.py)

    admin.alter_user_scram_credentials([UserScramCredentialDeletion(
        "carol", ScramMechanism.SCRAM_SHA_512)])["carol"].result(30)
    errors = _produce(bootstrap, carol, "scram-t")
    assert errors and errors[0] is not None
    assert errors[0].code() != KafkaError.TOPIC_AUTHORIZATION_FAILED, "carol still logs in"
