"""Kafka's SCRAM credential APIs answered from the broker's users (gateways/kafka/
scram_admin.py): the shapes Kafka answers in, checked where a real client cannot
(librdkafka's admin client crashes on Kafka's own refusal answer to a describe, so the
compat test, compat-tests/kafka/test_kafka_acls.py, checks the rest through it)."""

from __future__ import annotations

from ferrymq.core import Broker, Principal
from ferrymq.core.access import SYSTEM
from ferrymq.gateways.kafka import scram_admin
from ferrymq.protocols.kafka import errors as ke
from ferrymq.protocols.kafka import schema
from timer_helpers import config

DESCRIBE, ALTER = 50, 51
BOB = Principal("bob", "SASL/SCRAM-SHA-512", "10.0.0.9:5000")


def describe_req(*names: str) -> object:
    R = schema.request_class(DESCRIBE)
    return R(users=tuple(R.UserName(name=n) for n in names) if names else None)


async def test_a_refused_describe_answers_as_kafka_does(tmp_path) -> None:
    async with Broker.open(config(tmp_path, extra={"auth": {"enabled": True}})) as b:
        await b.put_user("carol", password="carol-secret", principal=SYSTEM)
        R = schema.response_class(DESCRIBE)
        ok = scram_admin.describe(R, describe_req("carol", "carol", "nobody"), b, SYSTEM)
        assert ok.error_code == ke.NONE
        assert [(r.user, r.error_code) for r in ok.results] == [
            ("carol", ke.DUPLICATE_RESOURCE), ("nobody", ke.RESOURCE_NOT_FOUND)]
        every = scram_admin.describe(R, describe_req(), b, SYSTEM)
        assert [(r.user, sorted(i.iterations for i in r.credential_infos))
                for r in every.results] == [("carol", [4096, 4096])]
        refused = scram_admin.describe(R, describe_req("carol", "dave"), b, BOB)
        assert refused.error_code == ke.CLUSTER_AUTHORIZATION_FAILED
        assert [(r.user, r.error_code) for r in refused.results] == [
            ("", ke.CLUSTER_AUTHORIZATION_FAILED)] * 2  # one per name asked, names empty


async def test_alterations_are_answered_per_user(tmp_path) -> None:
    async with Broker.open(config(tmp_path, extra={"auth": {"enabled": True}})) as b:
        Q, R = schema.request_class(ALTER), schema.response_class(ALTER)
        up = Q.ScramCredentialUpsertion
        req = Q(deletions=(Q.ScramCredentialDeletion(name="gone", mechanism=1),),
                upsertions=(up(name="carol", mechanism=2, iterations=8192, salt=b"s" * 16,
                               salted_password=b"p" * 64),
                            up(name="weak", mechanism=1, iterations=100, salt=b"s",
                               salted_password=b"p" * 32),
                            up(name="odd", mechanism=9, iterations=8192, salt=b"s",
                               salted_password=b"p" * 32),
                            up(name="twice", mechanism=1, iterations=8192, salt=b"s",
                               salted_password=b"p" * 32),
                            up(name="twice", mechanism=1, iterations=4096, salt=b"t",
                               salted_password=b"q" * 32)))
        out = await scram_admin.alter(R, req, b, SYSTEM)
        assert [(r.user, r.error_code) for r in out.results] == [
            ("gone", ke.RESOURCE_NOT_FOUND), ("carol", ke.NONE),
            ("weak", ke.UNACCEPTABLE_CREDENTIAL), ("odd", ke.UNSUPPORTED_SASL_MECHANISM),
            ("twice", ke.DUPLICATE_RESOURCE)]
        assert b.scram_credentials(principal=SYSTEM) == {"carol": {"SCRAM-SHA-512": 8192}}
        denied = await scram_admin.alter(R, Q(deletions=(Q.ScramCredentialDeletion(
            name="carol", mechanism=2),), upsertions=()), b, BOB)
        assert [(r.user, r.error_code) for r in denied.results] == [
            ("carol", ke.CLUSTER_AUTHORIZATION_FAILED)]
        assert b.scram_credentials(principal=SYSTEM) == {"carol": {"SCRAM-SHA-512": 8192}}
