"""Who may log in: users, API tokens and RocketMQ access keys, as tables of the state log.

Namespaces (docs/security.md, "What is stored"):

- ``auth.user``: name -> ``(super, verifiers, legacy)``. ``verifiers`` are SCRAM
  verifiers (protocols/scram.py: salt, iterations, StoredKey, ServerKey) for
  SCRAM-SHA-256 and SCRAM-SHA-512; never the password. PLAIN, HTTP Basic and MQTT
  passwords are checked against them. ``legacy`` is a PBKDF2 hash imported from
  an MQTT password file (it checks passwords, but cannot answer SCRAM).
- ``auth.token``: SHA-256 of the token (hex) -> ``(user, label, created ms)``. The
  token itself is shown once, when it is made; a stolen state log does not
  reveal it.
- ``auth.key``: AccessKey -> ``(user, SecretKey, created ms)``. RocketMQ's
  signature is an HMAC keyed by the SecretKey, so the server needs the secret
  itself (as RocketMQ's plain_acl.yml and ACL 2.0 store it): it is kept in the
  state log, which is as private as the data directory (mode 0700, the
  operator's). Hashing it would make every signature unverifiable.

Every table is applied by the state log (live, at recovery, on a slave), so a
change is effective on every door at once and durable when acknowledged.
Passwords checked in plain (PLAIN, Basic, MQTT) cost a PBKDF2 derivation; a
successful check is remembered (by a digest of the password) until the user
changes, so HTTP Basic does not pay it per request.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..protocols.scram import MECHANISMS, Verifier, check_password

NS_USER, NS_TOKEN, NS_KEY, NS_ACL = "auth.user", "auth.token", "auth.key", "auth.acl"
RESERVED_NAMES = frozenset({"ANONYMOUS", "*", "ferrymq"})
PASSWORD_CACHE_MAX = 10_000


def valid_user_name(name: str) -> bool:
    return (0 < len(name) <= 255 and name not in RESERVED_NAMES and name.isprintable()
            and ":" not in name and not name.startswith(" ") and not name.endswith(" "))


def token_digest(token: str | bytes) -> str:
    return hashlib.sha256(token.encode() if isinstance(token, str) else token).hexdigest()


@dataclass(frozen=True, slots=True)
class User:
    name: str
    super: bool = False
    verifiers: dict[str, Verifier] = field(default_factory=dict)
    legacy: str | None = None  # "pbkdf2_sha256$iterations$salt$hash" from an MQTT password file

    def to_wire(self) -> tuple[bool, list[Any], str | None]:
        return (self.super, [v.to_wire() for v in self.verifiers.values()], self.legacy)

    @classmethod
    def from_wire(cls, name: str, value: Any) -> User:
        sup, verifiers, legacy = value
        vs = {}
        for w in verifiers:
            v = Verifier.from_wire(w)
            vs[v.mechanism] = v
        return cls(name, bool(sup), vs, legacy)

    def check(self, password: bytes) -> bool:
        for v in self.verifiers.values():
            return check_password(v, password)
        if self.legacy:
            return _check_pbkdf2(self.legacy, password)
        return False


def _check_pbkdf2(stored: str, password: bytes) -> bool:
    try:
        scheme, iterations, salt, digest = stored.split("$")
        if scheme != "pbkdf2_sha256" or not 1 <= int(iterations) <= 10_000_000:
            return False
        got = hashlib.pbkdf2_hmac("sha256", password, bytes.fromhex(salt), int(iterations))
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), digest)


class _Table:
    """A state-log table (core/statelog.py ``Table``) that tells its owner of changes."""

    def __init__(self, on_change: Callable[[Any, Any], None]) -> None:
        self.data: dict[Any, Any] = {}
        self.on_change = on_change

    def apply(self, key: Any, value: Any) -> None:
        if value is None:
            self.data.pop(key, None)
        else:
            self.data[key] = value
        self.on_change(key, value)

    def get(self, key: Any) -> Any:
        return self.data.get(key)

    def items(self) -> Iterable[tuple[Any, Any]]:
        return list(self.data.items())

    def view(self) -> Callable[[], Iterable[tuple[Any, Any]]]:
        return dict(self.data).items

    def __len__(self) -> int:
        return len(self.data)


class Credentials:
    """The users, tokens and access keys (state log), plus users loaded from files."""

    def __init__(self, on_users_changed: Callable[[], None]) -> None:
        self.users: dict[str, User] = {}
        self.static_users: dict[str, User] = {}  # from password files (MQTT), per start
        self._on_users_changed = on_users_changed
        self.user_table = _Table(self._user_applied)
        self.token_table = _Table(lambda k, v: None)
        self.key_table = _Table(lambda k, v: None)
        self._verified: dict[tuple[str, bytes], User] = {}

    def _user_applied(self, key: Any, value: Any) -> None:
        if value is None:
            self.users.pop(key, None)
        else:
            try:
                self.users[key] = User.from_wire(key, value)
            except (TypeError, ValueError):
                self.users.pop(key, None)
        self._verified.clear()
        self._on_users_changed()

    def tables(self) -> dict[str, _Table]:
        return {NS_USER: self.user_table, NS_TOKEN: self.token_table, NS_KEY: self.key_table}

    # ------------------------------------------------------------ lookups

    def user(self, name: str) -> User | None:
        u = self.users.get(name)
        return u if u is not None else self.static_users.get(name)

    def is_super(self, name: str) -> bool:
        u = self.users.get(name)
        return u is not None and u.super

    def verify_password(self, name: str, password: bytes) -> bool:
        u = self.user(name)
        if u is None:
            return False
        key = (name, hashlib.sha256(password).digest())
        if self._verified.get(key) is u:
            return True
        if not u.check(password):
            return False
        if len(self._verified) >= PASSWORD_CACHE_MAX:
            self._verified.clear()
        self._verified[key] = u
        return True

    def verifier(self, name: str, mechanism: str) -> Verifier | None:
        u = self.user(name)
        return None if u is None else u.verifiers.get(mechanism)

    def token_user(self, token: bytes) -> str | None:
        found = self.token_table.get(token_digest(token))
        if found is None:
            return None
        user = str(found[0])
        return user if self.user(user) is not None else None

    def access_secret(self, access_key: str) -> tuple[str, str] | None:
        found = self.key_table.get(access_key)
        if found is None:
            return None
        user = str(found[0])
        return (user, str(found[1])) if self.user(user) is not None else None

    def tokens_of(self, user: str) -> list[str]:
        return [k for k, v in self.token_table.items() if v[0] == user]

    def keys_of(self, user: str) -> list[str]:
        return [k for k, v in self.key_table.items() if v[0] == user]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


__all__ = ["MECHANISMS", "NS_ACL", "NS_KEY", "NS_TOKEN", "NS_USER", "Credentials", "User",
           "token_digest", "valid_user_name"]
