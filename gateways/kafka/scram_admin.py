"""Kafka's SCRAM credential APIs (DescribeUserScramCredentials 50,
AlterUserScramCredentials 51) on the broker's users (core/security.py,
docs/security.md): what ``kafka-configs --alter --add-config 'SCRAM-SHA-256=[...]'
--entity-type users`` and the admin clients' ``describe/alter_user_scram_credentials``
send.

The client derives SaltedPassword itself and sends it with the salt and iteration
count; the broker keeps only the verifier made from it, as for a password set with
``ferrymq user add``. Kafka's rules, kept: iterations between 4096 and 16384
(UNACCEPTABLE_CREDENTIAL), a user named twice in one alteration is refused for all
its entries (DUPLICATE_RESOURCE), describing or deleting what does not exist is
RESOURCE_NOT_FOUND, an unknown mechanism UNSUPPORTED_SASL_MECHANISM. Access is the
core's: CLUSTER DESCRIBE to list, CLUSTER ALTER to change.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ...core.broker import Broker
from ...core.errors import FerryError
from ...protocols.kafka import errors as ke
from ...protocols.scram import MIN_ITERATIONS
from .errors import kafka_error

# Kafka's ScramMechanism enum (0 is UNKNOWN).
MECHANISMS = {1: "SCRAM-SHA-256", 2: "SCRAM-SHA-512"}
MECHANISM_CODES = {v: k for k, v in MECHANISMS.items()}
MAX_ITERATIONS = 16384  # Kafka's ScramMechanism.maxIterations


def describe(R: Any, req: Any, broker: Broker, principal: Any) -> Any:
    # None or empty: every user holding a credential (as Kafka reads both)
    names = [u.name for u in req.users] if req.users else None
    try:
        found = broker.scram_credentials(None if names is None else sorted(set(names)),
                                         principal=principal)
    except FerryError as exc:
        # Exactly as Kafka answers a refusal: the error at the top and once per user
        # asked, the users' names left empty (librdkafka's admin client crashed on a
        # top-level error with no results, and on results naming the users).
        code, message = kafka_error(exc), str(exc)
        return R(error_code=code, error_message=message, results=tuple(
            R.DescribeUserScramCredentialsResult(user="", error_code=code, error_message=message,
                                                 credential_infos=())
            for _ in req.users or ()))
    twice = {n for n, k in Counter(names or ()).items() if k > 1}
    results: list[Any] = []
    for name in (names if names is not None else sorted(found)):
        if name in twice:
            if name in {r.user for r in results}:
                continue
            results.append(R.DescribeUserScramCredentialsResult(
                user=name, error_code=ke.DUPLICATE_RESOURCE,
                error_message=f"user {name!r} asked for more than once", credential_infos=()))
        elif not found.get(name):
            results.append(R.DescribeUserScramCredentialsResult(
                user=name, error_code=ke.RESOURCE_NOT_FOUND,
                error_message=f"user {name!r} has no SCRAM credential", credential_infos=()))
        else:
            results.append(R.DescribeUserScramCredentialsResult(
                user=name, error_code=ke.NONE, error_message=None, credential_infos=tuple(
                    R.CredentialInfo(mechanism=MECHANISM_CODES[m], iterations=i)
                    for m, i in found[name].items())))
    return R(error_code=ke.NONE, error_message=None, results=tuple(results))


async def alter(R: Any, req: Any, broker: Broker, principal: Any) -> Any:
    """One result per user named: its changes are made in request order, the first
    failure ending that user's (Kafka answers per user, not per change)."""
    changes = [("delete", d) for d in req.deletions] + [("upsert", u) for u in req.upsertions]
    order: list[str] = []
    for _, c in changes:
        if c.name not in order:
            order.append(c.name)
    mechs_of: Counter[tuple[str, int]] = Counter((c.name, c.mechanism) for _, c in changes)
    dupes = {name for (name, _), k in mechs_of.items() if k > 1}
    errors: dict[str, tuple[int, str]] = {}
    for kind, c in changes:
        name = c.name
        if name in errors:
            continue
        if name in dupes:
            errors[name] = (ke.DUPLICATE_RESOURCE,
                            f"a mechanism of user {name!r} is changed more than once")
            continue
        mechanism = MECHANISMS.get(c.mechanism)
        if mechanism is None:
            errors[name] = (ke.UNSUPPORTED_SASL_MECHANISM, f"unknown mechanism {c.mechanism}")
            continue
        try:
            if kind == "delete":
                if not await broker.delete_scram_credential(name, mechanism,
                                                            principal=principal):
                    errors[name] = (ke.RESOURCE_NOT_FOUND,
                                    f"user {name!r} has no {mechanism} credential")
            elif not MIN_ITERATIONS <= c.iterations <= MAX_ITERATIONS:
                errors[name] = (ke.UNACCEPTABLE_CREDENTIAL, f"iterations must be between "
                                f"{MIN_ITERATIONS} and {MAX_ITERATIONS}")
            elif not c.salt or not c.salted_password:
                errors[name] = (ke.UNACCEPTABLE_CREDENTIAL, "an empty salt or salted password")
            else:
                await broker.put_scram_credential(name, mechanism, c.iterations, c.salt,
                                                  c.salted_password, principal=principal)
        except FerryError as exc:
            errors[name] = (kafka_error(exc), str(exc))
    return R(results=tuple(
        R.AlterUserScramCredentialsResult(user=n, error_code=errors.get(n, (ke.NONE, None))[0],
                                          error_message=errors.get(n, (ke.NONE, None))[1])
        for n in order))
