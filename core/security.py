"""The Broker's security calls: authentication questions the doors ask, and user/ACL management.

A part of the facade (``Broker`` inherits it), kept in its own module so that
the broker's own file stays about messages. Doors authenticate a connection by
asking these calls (``authenticate``, ``scram_verifier``, ``token_user``,
``access_secret``) and then build the ``Principal`` every later call carries;
the decision on each call is ``Broker._authorize`` (core/access.py).

Management calls change the state log's ``auth.*`` namespaces
(core/credentials.py) and are checked like every other call: CLUSTER ALTER to
change users, tokens, keys and ACLs, CLUSTER DESCRIBE to list them. A super
user passes every check. ``ferrymq user`` / ``ferrymq acl`` (offline, on a
stopped broker's data directory) pass SYSTEM: that is the bootstrap of the
first super user (docs/security.md, "Quick start").
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..protocols.scram import (
    DEFAULT_ITERATIONS,
    MECHANISMS,
    MIN_ITERATIONS,
    ScramError,
    Verifier,
    make_verifier,
)
from .access import (
    ALTER,
    ANONYMOUS,
    CLUSTER,
    DESCRIBE,
    AccessControl,
    Operation,
    Principal,
    ResourceType,
    Rule,
)
from .credentials import (
    NS_ACL,
    NS_KEY,
    NS_TOKEN,
    NS_USER,
    Credentials,
    User,
    now_ms,
    token_digest,
    valid_user_name,
)
from .errors import InvalidArgument

if TYPE_CHECKING:
    from .statelog import StateLog


class _AclTable:
    """The ``auth.acl`` namespace: rule id -> rule, applied into the AccessControl."""

    def __init__(self, access: AccessControl) -> None:
        self.access = access
        self.data: dict[Any, Any] = {}

    def apply(self, key: Any, value: Any) -> None:
        if value is None:
            self.data.pop(key, None)
            self.access.set_rule(str(key), None)
            return
        try:
            rule = Rule.from_wire(value)
        except (TypeError, ValueError, InvalidArgument):
            return
        self.data[key] = value
        self.access.set_rule(str(key), rule)

    def get(self, key: Any) -> Any:
        return self.data.get(key)

    def items(self) -> Iterable[tuple[Any, Any]]:
        return list(self.data.items())

    def view(self) -> Any:
        return dict(self.data).items

    def __len__(self) -> int:
        return len(self.data)


def install(state: StateLog, access: AccessControl) -> Credentials:
    """Register the auth namespaces with the state log; returns the credentials."""
    creds = Credentials(access.changed)
    access.is_super = creds.is_super
    for ns, table in creds.tables().items():
        state.register(ns, table, admin=True)
    state.register(NS_ACL, _AclTable(access), admin=True)
    return creds


class SecurityCalls:
    """Mixed into ``Broker``: see the module docstring."""

    _access: AccessControl
    credentials: Credentials
    state: StateLog

    def _authorize(self, principal: Principal, kind: ResourceType, name: str,
                   operation: Operation) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------ asked by the doors

    @property
    def auth_enabled(self) -> bool:
        """``[auth] enabled``: nothing anonymous passes unless an ACL grants it."""
        return self._access.enabled

    def authenticate(self, user: str, password: bytes) -> bool:
        """Whether ``password`` is ``user``'s (checked against the stored verifier)."""
        return self.credentials.verify_password(user, password)

    def scram_verifier(self, user: str, mechanism: str) -> Verifier | None:
        """``user``'s SCRAM verifier for ``mechanism`` (None: no such user or mechanism)."""
        return self.credentials.verifier(user, mechanism)

    def token_user(self, token: bytes) -> str | None:
        """The user an API token belongs to, or None."""
        return self.credentials.token_user(token)

    def access_secret(self, access_key: str) -> tuple[str, str] | None:
        """(user, SecretKey) of a RocketMQ AccessKey, or None."""
        return self.credentials.access_secret(access_key)

    @property
    def acl_generation(self) -> int:
        """Changes whenever a decision may change (rules, super users): a door that
        remembers decisions forgets them when this moves."""
        return self._access.generation

    def checks(self, *, principal: Principal = ANONYMOUS) -> bool:
        """Whether ``principal``'s calls are checked at all (``[auth] enabled``, or its
        door's legacy rule file): a door filtering deliveries skips the work if not."""
        return self._access.enforced(principal)

    def permits(self, kind: ResourceType, name: str, operation: Operation, *,
                address: str | None = None, partial: bool = False,
                principal: Principal = ANONYMOUS) -> bool:
        """The access decision as a question, for a door that filters what it hands
        out (MQTT deliveries and retained messages, by address; subscriptions, by
        filter with ``partial``). The same check, the same cache."""
        return self._access.allows(principal, kind, name, operation, address, partial)

    def load_file_rules(self, source: str, rules: Sequence[Rule],
                        users: Sequence[tuple[str, str]] = (), *,
                        enforce_door: str | None = None,
                        principal: Principal = ANONYMOUS) -> None:
        """Rules and users of a door's legacy files (the MQTT ACL and password files),
        held in memory as part of the one model and replaced at each start; with
        ``enforce_door`` the rules hold for that door's principals even with auth
        off (as the files always did). Checks CLUSTER ALTER."""
        self._authorize(principal, CLUSTER, "", ALTER)
        for name, legacy in users:
            if self.credentials.users.get(name) is None:
                self.credentials.static_users[name] = User(name, legacy=legacy)
        self._access.load_static(source, list(rules), enforce_door)

    # ------------------------------------------------------------ users

    def users(self, *, principal: Principal = ANONYMOUS) -> list[dict[str, Any]]:
        """Every user: name, super flag, mechanisms, token and key counts (no secrets)."""
        self._authorize(principal, CLUSTER, "", DESCRIBE)
        c = self.credentials
        out = []
        for name in sorted({*c.users, *c.static_users}):
            u = c.user(name)
            assert u is not None
            out.append({"name": name, "super": u.super,
                        "mechanisms": sorted(u.verifiers) + (["pbkdf2"] if u.legacy else []),
                        "tokens": len(c.tokens_of(name)), "access_keys": len(c.keys_of(name)),
                        "source": "state" if name in c.users else "file"})
        return out

    def scram_credentials(self, names: Sequence[str] | None = None, *,
                          principal: Principal = ANONYMOUS) -> dict[str, dict[str, int]]:
        """Per user of ``names`` (None: every user holding one) its SCRAM mechanisms and
        their iteration counts, as Kafka's DescribeUserScramCredentials shows them (no
        salts, no keys); a named user without any maps to {}. Checks CLUSTER DESCRIBE."""
        self._authorize(principal, CLUSTER, "", DESCRIBE)
        c = self.credentials
        wanted = sorted({*c.users, *c.static_users}) if names is None else list(names)
        out: dict[str, dict[str, int]] = {}
        for name in wanted:
            u = c.user(name)
            mechs = {m: v.iterations for m, v in sorted(u.verifiers.items())} if u else {}
            if mechs or names is not None:
                out[name] = mechs
        return out

    async def put_user(self, name: str, *, password: str | None = None,
                       super_user: bool | None = None,
                       mechanisms: Sequence[str] = tuple(MECHANISMS),
                       iterations: int = DEFAULT_ITERATIONS,
                       principal: Principal = ANONYMOUS) -> None:
        """Create or change a user: a new password (verifiers for ``mechanisms``), the
        super flag. Checks CLUSTER ALTER. Effective on every door at once."""
        self._authorize(principal, CLUSTER, "", ALTER)
        if not valid_user_name(name):
            raise InvalidArgument(f"invalid user name {name!r}")
        old = self.credentials.users.get(name)
        if old is None and password is None:
            raise InvalidArgument("a new user needs a password")
        verifiers = dict(old.verifiers) if old else {}
        if password is not None:
            if not password:
                raise InvalidArgument("an empty password")
            try:
                verifiers = {m: make_verifier(m, password.encode(), iterations=iterations)
                             for m in mechanisms}
            except ScramError as exc:
                raise InvalidArgument(str(exc)) from None
        sup = (old.super if old else False) if super_user is None else super_user
        await self.state.put(NS_USER, name, User(name, sup, verifiers).to_wire())

    async def put_scram_credential(self, name: str, mechanism: str, iterations: int,
                                   salt: bytes, salted_password: bytes, *,
                                   principal: Principal = ANONYMOUS) -> None:
        """Kafka's AlterUserScramCredentials upsertion: the client sends SaltedPassword
        (never the password); the verifier is derived from it. Checks CLUSTER ALTER."""
        import hashlib
        import hmac

        self._authorize(principal, CLUSTER, "", ALTER)
        if mechanism not in MECHANISMS:
            raise InvalidArgument(f"unsupported mechanism {mechanism!r}")
        if not valid_user_name(name):
            raise InvalidArgument(f"invalid user name {name!r}")
        if iterations < MIN_ITERATIONS:
            raise InvalidArgument(f"iterations: at least {MIN_ITERATIONS}")
        h = MECHANISMS[mechanism]
        stored = hashlib.new(h, hmac.new(salted_password, b"Client Key", h).digest()).digest()
        server = hmac.new(salted_password, b"Server Key", h).digest()
        old = self.credentials.users.get(name)
        verifiers = dict(old.verifiers) if old else {}
        verifiers[mechanism] = Verifier(mechanism, bytes(salt), iterations, stored, server)
        await self.state.put(NS_USER, name,
                             User(name, old.super if old else False, verifiers).to_wire())

    async def delete_scram_credential(self, name: str, mechanism: str, *,
                                      principal: Principal = ANONYMOUS) -> bool:
        self._authorize(principal, CLUSTER, "", ALTER)
        old = self.credentials.users.get(name)
        if old is None or mechanism not in old.verifiers:
            return False
        verifiers = {m: v for m, v in old.verifiers.items() if m != mechanism}
        await self.state.put(NS_USER, name, User(name, old.super, verifiers).to_wire())
        return True

    async def delete_user(self, name: str, *, principal: Principal = ANONYMOUS) -> bool:
        """Delete a user with its tokens and access keys (one record). False: none."""
        self._authorize(principal, CLUSTER, "", ALTER)
        c = self.credentials
        if name not in c.users:
            return False
        changes: list[tuple[str, Any, Any]] = [(NS_USER, name, None)]
        changes += [(NS_TOKEN, k, None) for k in c.tokens_of(name)]
        changes += [(NS_KEY, k, None) for k in c.keys_of(name)]
        await self.state.put_many(changes)
        return True

    # ------------------------------------------------------------ tokens and keys

    async def create_token(self, user: str, label: str = "", *,
                           principal: Principal = ANONYMOUS) -> str:
        """A new API token of ``user`` (HTTP bearer); shown once, stored as a hash."""
        self._authorize(principal, CLUSTER, "", ALTER)
        if user not in self.credentials.users:
            raise InvalidArgument(f"no user {user!r}")
        token = "fmq_" + secrets.token_urlsafe(32)
        await self.state.put(NS_TOKEN, token_digest(token), (user, label, now_ms()))
        return token

    def tokens(self, *, principal: Principal = ANONYMOUS) -> list[dict[str, Any]]:
        self._authorize(principal, CLUSTER, "", DESCRIBE)
        return [{"id": k[:16], "user": v[0], "label": v[1], "created_ms": v[2]}
                for k, v in sorted(self.credentials.token_table.items())]

    async def delete_token(self, token_or_id: str, *, principal: Principal = ANONYMOUS) -> bool:
        """Delete a token, named by itself or by its listed id (a digest prefix)."""
        self._authorize(principal, CLUSTER, "", ALTER)
        table = self.credentials.token_table
        digest = token_digest(token_or_id)
        if table.get(digest) is None:
            found = [k for k, _ in table.items() if len(token_or_id) >= 8
                     and k.startswith(token_or_id)]
            if len(found) != 1:
                return False
            digest = found[0]
        await self.state.put(NS_TOKEN, digest, None)
        return True

    async def create_access_key(self, user: str, *,
                                principal: Principal = ANONYMOUS) -> tuple[str, str]:
        """A new RocketMQ AccessKey/SecretKey pair of ``user``."""
        self._authorize(principal, CLUSTER, "", ALTER)
        if user not in self.credentials.users:
            raise InvalidArgument(f"no user {user!r}")
        ak, sk = "AK" + secrets.token_hex(10).upper(), secrets.token_urlsafe(24)
        await self.state.put(NS_KEY, ak, (user, sk, now_ms()))
        return ak, sk

    def access_keys(self, *, principal: Principal = ANONYMOUS) -> list[dict[str, Any]]:
        self._authorize(principal, CLUSTER, "", DESCRIBE)
        return [{"access_key": k, "user": v[0], "created_ms": v[2]}
                for k, v in sorted(self.credentials.key_table.items())]

    async def delete_access_key(self, access_key: str, *,
                                principal: Principal = ANONYMOUS) -> bool:
        self._authorize(principal, CLUSTER, "", ALTER)
        if self.credentials.key_table.get(access_key) is None:
            return False
        await self.state.put(NS_KEY, access_key, None)
        return True

    # ------------------------------------------------------------ ACLs

    def acls(self, *, principal: Principal = ANONYMOUS) -> list[Rule]:
        """Every rule (the state log's and the files'), for DescribeAcls and listings."""
        self._authorize(principal, CLUSTER, "", DESCRIBE)
        return self._access.all_rules()

    async def add_acls(self, rules: Sequence[Rule], *, principal: Principal = ANONYMOUS) -> None:
        """Add rules (one record: all or none). Checks CLUSTER ALTER."""
        self._authorize(principal, CLUSTER, "", ALTER)
        await self.state.put_many([(NS_ACL, r.id, r.to_wire()) for r in rules])

    async def delete_acls(self, rules: Sequence[Rule], *,
                          principal: Principal = ANONYMOUS) -> list[Rule]:
        """Delete the given rules of the state log (file rules stay: edit the file);
        returns those that existed. Checks CLUSTER ALTER."""
        self._authorize(principal, CLUSTER, "", ALTER)
        found = [r for r in rules if r.id in self._access.rules]
        await self.state.put_many([(NS_ACL, r.id, None) for r in found])
        return found
