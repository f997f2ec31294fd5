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
"""

from __future__ import annotations

import getpass
import hashlib
import hmac
import os
import sys
from dataclasses import dataclass, field

from ...protocols.mqtt.topics import filter_covers, filter_matches, valid_topic_filter

# Iterations of PBKDF2-HMAC-SHA256 for new hashes (stored per hash, so it can change):
# about 50 ms a check here; OWASP suggests more where connect rate matters less.
PBKDF2_ITERATIONS = 100_000
READ, WRITE = 1, 2
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
                if "/" in client_id or "+" in client_id or "#" in client_id:
                    continue  # a client id that would widen the pattern never matches
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


class ClientAccess:
    """One connected client's rights, computed once at CONNECT."""

    def __init__(self, rules: list[tuple[int, str]] | None) -> None:
        self._rules = rules  # None: no ACL file, everything allowed
        # Deny rules are checked per delivered message too: a subscription to
        # sensors/# is granted, but sensors/secret/x never reaches the client.
        self.read_denies = [f for access, f in rules or () if not access]

    def may_read(self, topic: str) -> bool:
        return not any(filter_matches(f, topic) for f in self.read_denies)

    def may_publish(self, topic: str) -> bool:
        if self._rules is None:
            return True
        granted = False
        for access, f in self._rules:
            if filter_matches(f, topic):
                if not access:
                    return False
                granted |= bool(access & WRITE)
        return granted

    def may_subscribe(self, topic_filter: str) -> bool:
        if self._rules is None:
            return True
        granted = False
        for access, f in self._rules:
            if not access:
                if filter_covers(f, topic_filter):
                    return False  # wholly denied; a partial deny filters deliveries
            elif access & READ and filter_covers(f, topic_filter):
                granted = True
        return granted


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: python -m ferrymq.gateways.mqtt.auth USER  (reads the password)")
    print(f"{sys.argv[1]}:{hash_password(getpass.getpass())}")


if __name__ == "__main__":
    main()
