"""Who may connect (a password file) and what each client may publish and subscribe to (ACLs).

Password file: one ``username:pbkdf2_sha256$<iterations>$<salt hex>$<hash hex>``
per line (``hash_password`` makes one; ``python -m ferrymq.gateways.mqtt.auth
USER`` prints a line). ACL file, Mosquitto's shape:

    # rules before any "user" line apply to every client, anonymous ones too
    topic read $SYS/#
    user alice
    topic readwrite sensors/#
    topic deny sensors/secret/#
    pattern write devices/%c/#        # %c client id, %u user name

Access is ``read``, ``write``, ``readwrite`` or ``deny``; without an ACL file
everything is allowed. With one, what no rule grants is denied, and a deny
rule beats a grant.

Both files are loaded into the broker's one access model at start
(``Broker.load_file_rules``; docs/security.md, "MQTT files"): the password
file's users can log in on every door by password (not SCRAM: a PBKDF2 hash
is no SCRAM verifier), and the ACL file's rules are MQTT-filter rules judged by
the core. With ``[auth] enabled`` off they hold for MQTT clients only, as
before; with it on, for every door. ``ClientAccess`` asks the core.
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import os
import sys
from dataclasses import dataclass, field

from ...core.access import ALL, ANONYMOUS_NAME, MQTT, SYSTEM, TOPIC, Principal
from ...core.access import READ as CORE_READ
from ...core.access import WRITE as CORE_WRITE
from ...core.access import Rule as CoreRule
from ...core.addresses import broker_topic
from ...core.broker import Broker
from ...protocols.mqtt.topics import valid_topic_filter

# Iterations of PBKDF2-HMAC-SHA256 for new hashes (stored per hash, so it can change):
# about 50 ms a check here; OWASP suggests more where connect rate matters less.
PBKDF2_ITERATIONS = 100_000
READ, WRITE = 1, 2
READ_CACHE_MAX = 1_000  # per client: MQTT topics whose read decision is remembered
_ACCESS = {"read": READ, "write": WRITE, "readwrite": READ | WRITE, "deny": 0}


class AuthFileError(ValueError):
    """A password or ACL file cannot be parsed; the message names the line."""


def hash_password(password: str, iterations: int = PBKDF2_ITERATIONS) -> str:
    salt = os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"pbkdf2_sha256${iterations}${salt.hex()}${digest.hex()}"


def verify_password(stored: str, password: bytes) -> bool:
    try:
        scheme, iterations, salt, digest = stored.split("$")
        if scheme != "pbkdf2_sha256":
            return False
        got = hashlib.pbkdf2_hmac("sha256", password, bytes.fromhex(salt), int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), digest)


def load_passwords(path: str) -> dict[str, str]:
    users: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, stored = line.partition(":")
            if not sep or not user or not stored.startswith("pbkdf2_sha256$"):
                raise AuthFileError(f"{path}:{n}: expected user:pbkdf2_sha256$...")
            users[user] = stored
    return users


@dataclass(frozen=True, slots=True)
class Rule:
    access: int  # READ | WRITE bits; 0 = deny
    filter: str
    pattern: bool = False  # %c / %u substituted per client


@dataclass
class Acl:
    everyone: list[Rule] = field(default_factory=list)
    users: dict[str, list[Rule]] = field(default_factory=dict)

    def rules_for(self, username: str | None, client_id: str) -> list[tuple[int, str]]:
        """The (access, filter) rules of one client, patterns substituted."""
        out = []
        for r in [*self.everyone, *self.users.get(username or "", ())]:
            f = r.filter
            if r.pattern:
                if any(ch in value for value in (client_id, username or "")
                       for ch in "/+#"):
                    continue  # a client id or user name that would widen it never matches
                f = f.replace("%c", client_id).replace("%u", username or "")
            out.append((r.access, f))
        return out


def load_acl(path: str) -> Acl:
    acl = Acl()
    current = acl.everyone
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            words = line.split()  # "#" is a wildcard too: comments are whole lines
            if not words or words[0].startswith("#"):
                continue
            if words[0] == "user" and len(words) == 2:
                current = acl.users.setdefault(words[1], [])
                continue
            if words[0] in ("topic", "pattern") and len(words) in (2, 3):
                access = "readwrite" if len(words) == 2 else words[1]
                flt = words[-1]
                if access not in _ACCESS or not valid_topic_filter(flt):
                    raise AuthFileError(f"{path}:{n}: bad rule {line.strip()!r}")
                current.append(Rule(_ACCESS[access], flt, words[0] == "pattern"))
                continue
            raise AuthFileError(f"{path}:{n}: cannot parse {line.strip()!r}")
    return acl


def core_rules(acl: Acl) -> list[CoreRule]:
    """The file's rules in the one access model (docs/security.md, "MQTT files"):
    topic and pattern lines become MQTT-filter rules (``pattern``: %u and %c
    substituted at check time, never matching a user or client id that holds a
    wildcard or a "/"); rules before any ``user`` line are every user's and the
    anonymous principal's; ``readwrite`` is a READ and a WRITE grant, ``deny`` a
    deny of everything."""
    out: list[CoreRule] = []
    sections: list[tuple[tuple[str, ...], list[Rule]]] = [
        (("User:*", "User:" + ANONYMOUS_NAME), acl.everyone)]
    sections += [((f"User:{user}",), rules) for user, rules in acl.users.items()]
    for principals, rules in sections:
        for principal in principals:
            for r in rules:
                if not r.access:
                    ops = [(ALL, False)]
                else:
                    ops = [(op, True) for bit, op in ((READ, CORE_READ), (WRITE, CORE_WRITE))
                           if r.access & bit]
                for op, allow in ops:
                    out.append(CoreRule(principal, TOPIC, MQTT, r.filter, op, allow,
                                        substitute=r.pattern))
    return out


class ClientAccess:
    """One connected client's rights: the core's decision (``Broker.permits``) for its
    principal, judged at MQTT addresses, remembered per topic until the ACLs change.
    ``read_denies`` says whether deliveries need a look at all (not when the
    client's calls are not checked: auth off and no ACL file)."""

    def __init__(self, broker: Broker | None, principal: Principal = SYSTEM) -> None:
        self.broker = broker  # None: everything allowed (a stand-in, tests)
        self.principal = principal
        self.read_denies = broker is not None and broker.checks(principal=principal)
        self._generation = broker.acl_generation if broker is not None else 0
        self._reads: dict[str, bool] = {}
        self._writes: dict[str, bool] = {}

    def _fresh(self) -> dict[str, bool]:
        assert self.broker is not None
        g = self.broker.acl_generation
        if g != self._generation:
            self._generation = g
            self._reads = {}
            self._writes = {}
        return self._reads

    def may_read(self, topic: str) -> bool:
        if self.broker is None:
            return True
        reads = self._fresh()
        hit = reads.get(topic)
        if hit is None:
            assert self.broker is not None
            hit = self.broker.permits(TOPIC, broker_topic(topic), CORE_READ, address=topic,
                                      principal=self.principal)
            if len(reads) >= READ_CACHE_MAX:
                reads.clear()
            reads[topic] = hit
        return hit

    def may_publish(self, topic: str) -> bool:
        if self.broker is None:
            return True
        if not self.read_denies:
            return True  # this client's calls are not checked (auth off, no ACL file)
        self._fresh()
        hit = self._writes.get(topic)
        if hit is None:
            hit = self.broker.permits(TOPIC, broker_topic(topic), CORE_WRITE, address=topic,
                                      principal=self.principal)
            if len(self._writes) >= READ_CACHE_MAX:
                self._writes.clear()
            self._writes[topic] = hit
        return hit

    def may_subscribe(self, topic_filter: str) -> bool:
        if self.broker is None:
            return True
        first = topic_filter.split("/", 1)[0]
        name = "" if first in ("+", "#") else broker_topic(first)
        return self.broker.permits(TOPIC, name, CORE_READ, address=topic_filter, partial=True,
                                   principal=self.principal)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m ferrymq.gateways.mqtt.auth USER  (reads the password)")
    print(f"{sys.argv[1]}:{hash_password(getpass.getpass())}")


if __name__ == "__main__":
    main()
