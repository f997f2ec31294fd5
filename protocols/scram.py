"""SCRAM (RFC 5802, RFC 7677): verifiers, and the server's side of the exchange as a state machine.

Sans-I/O: ``ScramServer`` takes the client's messages as bytes and returns the
server's; it never sees a socket. The Kafka door runs it inside SaslAuthenticate
(KIP-84), and any other door could run it the same way. ``ScramClient`` is the
other side, for tests and FerryMQ's own tools.

What a server stores for a user is a *verifier*: salt, iteration count,
StoredKey = H(HMAC(SaltedPassword, "Client Key")) and ServerKey =
HMAC(SaltedPassword, "Server Key"), never the password (RFC 5802 section 3). A
plain password (SASL PLAIN, HTTP Basic, MQTT) is checked against the same
verifier: derive SaltedPassword with the stored salt and count and compare the
StoredKey (``check_password``).

The exchange (no channel binding: ``n,,`` GS2 header, or ``y,,``):

    client-first   n,,n=user,r=cnonce
    server-first   r=cnonce+snonce,s=base64(salt),i=iterations
    client-final   c=biws,r=cnonce+snonce,p=base64(ClientProof)
    server-final   v=base64(ServerSignature)      (or e=invalid-proof)
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import os
from dataclasses import dataclass

from .errors import RemoteProtocolError

MECHANISMS = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
MIN_ITERATIONS = 4096  # RFC 7677: at least 4096 for SHA-256
DEFAULT_ITERATIONS = 4096  # Kafka's default for kafka-configs --add-config SCRAM-...
MAX_ITERATIONS = 1 << 20  # a stored verifier above this is refused (a cost bomb)
MAX_MESSAGE = 4096  # a client message longer than this is refused


class ScramError(RemoteProtocolError, ValueError):
    """The exchange failed (the peer's messages, protocols/errors.py); ``str()`` is the
    RFC 5802 server-error value where one fits."""


@dataclass(frozen=True, slots=True)
class Verifier:
    """What the server keeps for one user and mechanism (RFC 5802 section 3)."""

    mechanism: str
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    def to_wire(self) -> tuple[str, bytes, int, bytes, bytes]:
        return (self.mechanism, self.salt, self.iterations, self.stored_key, self.server_key)

    @classmethod
    def from_wire(cls, value: tuple[object, ...] | list[object]) -> Verifier:
        mech, salt, iterations, stored, server = value
        if mech not in MECHANISMS or not isinstance(iterations, int) or not all(
                isinstance(b, bytes) for b in (salt, stored, server)):
            raise ValueError(f"not a SCRAM verifier: {mech!r}")
        assert isinstance(salt, bytes) and isinstance(stored, bytes) and isinstance(server, bytes)
        return cls(str(mech), salt, iterations, stored, server)


def _hash(mechanism: str) -> str:
    try:
        return MECHANISMS[mechanism]
    except KeyError:
        raise ScramError(f"unknown mechanism {mechanism!r}") from None


def salted_password(mechanism: str, password: bytes, salt: bytes, iterations: int) -> bytes:
    """Hi(Normalize(password), salt, i): PBKDF2 with HMAC-H. (SASLprep is not applied:
    Kafka's clients do not apply it either; passwords are compared as UTF-8 bytes.)"""
    return hashlib.pbkdf2_hmac(_hash(mechanism), password, salt, iterations)


def _hmac(mechanism: str, key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, _hash(mechanism)).digest()


def make_verifier(mechanism: str, password: bytes, *, salt: bytes | None = None,
                  iterations: int = DEFAULT_ITERATIONS) -> Verifier:
    """A new verifier for ``password`` (a fresh 32-byte salt unless one is given)."""
    if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
        raise ScramError(f"iterations: between {MIN_ITERATIONS} and {MAX_ITERATIONS}")
    salt = os.urandom(32) if salt is None else salt
    sp = salted_password(mechanism, password, salt, iterations)
    client_key = _hmac(mechanism, sp, b"Client Key")
    stored = hashlib.new(_hash(mechanism), client_key).digest()
    return Verifier(mechanism, salt, iterations, stored, _hmac(mechanism, sp, b"Server Key"))


def check_password(v: Verifier, password: bytes) -> bool:
    """Whether ``password`` is the one ``v`` was made from (constant-time compare)."""
    if not MIN_ITERATIONS <= v.iterations <= MAX_ITERATIONS:
        return False
    sp = salted_password(v.mechanism, password, v.salt, v.iterations)
    stored = hashlib.new(_hash(v.mechanism), _hmac(v.mechanism, sp, b"Client Key")).digest()
    return hmac.compare_digest(stored, v.stored_key)


def _attributes(message: bytes) -> list[tuple[str, str]]:
    if len(message) > MAX_MESSAGE:
        raise ScramError("invalid-encoding")
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError:
        raise ScramError("invalid-encoding") from None
    out = []
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=" or not part[0].isalpha():
            raise ScramError("invalid-encoding")
        out.append((part[0], part[2:]))
    return out


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ScramError("invalid-encoding") from None


class ServerState(enum.Enum):
    WAIT_CLIENT_FIRST = "wait-client-first"
    WAIT_CLIENT_FINAL = "wait-client-final"
    DONE = "done"
    FAILED = "failed"


class ScramServer:
    """One server side of one exchange. ``first(msg)`` parses the client-first
    message and returns the user name it names; the caller then looks the user up
    and calls ``challenge(verifier)`` (None: unknown user — the exchange goes on
    with a fake verifier so that the answer does not tell whether a user exists)
    for the server-first message; ``final(msg)`` checks the proof and returns the
    server-final message. Any error raises ScramError and leaves the state FAILED;
    ``user`` is the authenticated name once the state is DONE."""

    def __init__(self, mechanism: str, *, nonce: bytes | None = None) -> None:
        _hash(mechanism)
        self.mechanism = mechanism
        self.state = ServerState.WAIT_CLIENT_FIRST
        self._snonce = _b64(nonce if nonce is not None else os.urandom(18))
        self.user = ""
        self._bare = ""
        self._cnonce = ""
        self._server_first = ""
        self._verifier: Verifier | None = None
        self._known = False

    def _fail(self, reason: str) -> ScramError:
        self.state = ServerState.FAILED
        return ScramError(reason)

    def first(self, message: bytes) -> str:
        if self.state is not ServerState.WAIT_CLIENT_FIRST:
            raise self._fail("other-error")
        try:
            text = message.decode("utf-8")
        except UnicodeDecodeError:
            raise self._fail("invalid-encoding") from None
        gs2, sep, rest = text.partition(",")
        authzid, sep2, bare = rest.partition(",")
        if not sep or not sep2 or gs2 not in ("n", "y") or (authzid and not
                                                            authzid.startswith("a=")):
            raise self._fail("channel-bindings-dont-match" if gs2.startswith("p")
                             else "invalid-encoding")
        try:
            attrs = _attributes(bare.encode())
        except ScramError as exc:
            raise self._fail(str(exc)) from None
        if len(attrs) < 2 or attrs[0][0] != "n" or attrs[1][0] != "r" or not attrs[1][1]:
            raise self._fail("invalid-encoding")
        if any(k == "m" for k, _ in attrs):
            raise self._fail("extensions-not-supported")
        name = attrs[0][1]
        if "=" in name.replace("=2C", "").replace("=3D", ""):
            raise self._fail("invalid-username-encoding")
        self.user = name.replace("=2C", ",").replace("=3D", "=")
        if not self.user:
            raise self._fail("invalid-username-encoding")
        self._cnonce = attrs[1][1]
        self._bare = bare
        return self.user

    def challenge(self, verifier: Verifier | None) -> bytes:
        if self.state is not ServerState.WAIT_CLIENT_FIRST or not self._bare:
            raise self._fail("other-error")
        if verifier is not None and (verifier.mechanism != self.mechanism or
                                     not MIN_ITERATIONS <= verifier.iterations <= MAX_ITERATIONS):
            verifier = None
        self._known = verifier is not None
        if verifier is None:  # an unknown user gets a plausible, stable challenge
            seed = hashlib.sha256(b"ferrymq-unknown-user\x00" + self.user.encode()).digest()
            verifier = Verifier(self.mechanism, seed[:16], DEFAULT_ITERATIONS, b"", b"")
        self._verifier = verifier
        self._server_first = (f"r={self._cnonce}{self._snonce},s={_b64(verifier.salt)},"
                              f"i={verifier.iterations}")
        self.state = ServerState.WAIT_CLIENT_FINAL
        return self._server_first.encode()

    def final(self, message: bytes) -> bytes:
        if self.state is not ServerState.WAIT_CLIENT_FINAL or self._verifier is None:
            raise self._fail("other-error")
        try:
            attrs = _attributes(message)
        except ScramError as exc:
            raise self._fail(str(exc)) from None
        if len(attrs) < 3 or attrs[0][0] != "c" or attrs[1][0] != "r" or attrs[-1][0] != "p":
            raise self._fail("invalid-encoding")
        nonce = self._cnonce + self._snonce
        # librdkafka before 2.6.1 (kcat, many distributions) sends the client nonce
        # again in front of the server's nonce (librdkafka PR 4895); Kafka 3.x accepted
        # it. Exactly that form is accepted too: it still carries the server's nonce.
        if attrs[1][1] != nonce and attrs[1][1] != self._cnonce + nonce:
            raise self._fail("other-error")
        try:
            cbind = _unb64(attrs[0][1])
        except ScramError as exc:
            raise self._fail(str(exc)) from None
        if cbind not in (b"n,,", b"y,,") and not (cbind.startswith((b"n,a=", b"y,a="))
                                                 and cbind.endswith(b",")):
            raise self._fail("channel-bindings-dont-match")
        try:
            proof = _unb64(attrs[-1][1])
        except ScramError as exc:
            raise self._fail(str(exc)) from None
        without_proof = message.decode("utf-8").rsplit(",p=", 1)[0]
        auth_message = f"{self._bare},{self._server_first},{without_proof}".encode()
        v = self._verifier
        signature = _hmac(self.mechanism, v.stored_key, auth_message)
        if not self._known or len(proof) != len(signature):
            raise self._fail("invalid-proof")
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(hashlib.new(_hash(self.mechanism), client_key).digest(),
                                   v.stored_key):
            raise self._fail("invalid-proof")
        self.state = ServerState.DONE
        return f"v={_b64(_hmac(self.mechanism, v.server_key, auth_message))}".encode()


class ScramClient:
    """The client side (tests, FerryMQ's tools): ``first()``, ``final(server_first)``,
    ``verify(server_final)``."""

    def __init__(self, mechanism: str, user: str, password: str, *,
                 nonce: str | None = None, double_nonce: bool = False) -> None:
        _hash(mechanism)
        self.double_nonce = double_nonce  # behave as librdkafka before 2.6.1 (tests)
        self.mechanism = mechanism
        self.password = password.encode()
        name = user.replace("=", "=3D").replace(",", "=2C")
        self.nonce = nonce or _b64(os.urandom(18))
        self._bare = f"n={name},r={self.nonce}"
        self._server_signature = b""

    def first(self) -> bytes:
        return f"n,,{self._bare}".encode()

    def final(self, server_first: bytes) -> bytes:
        attrs = dict(_attributes(server_first))
        if not attrs.get("r", "").startswith(self.nonce):
            raise ScramError("nonce mismatch")
        salt, iterations = _unb64(attrs["s"]), int(attrs["i"])
        sp = salted_password(self.mechanism, self.password, salt, iterations)
        client_key = _hmac(self.mechanism, sp, b"Client Key")
        stored = hashlib.new(_hash(self.mechanism), client_key).digest()
        r = self.nonce + attrs["r"] if self.double_nonce else attrs["r"]
        without_proof = f"c=biws,r={r}"
        auth_message = f"{self._bare},{server_first.decode()},{without_proof}".encode()
        signature = _hmac(self.mechanism, stored, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self._server_signature = _hmac(self.mechanism, _hmac(self.mechanism, sp, b"Server Key"),
                                       auth_message)
        return f"{without_proof},p={_b64(proof)}".encode()

    def verify(self, server_final: bytes) -> bool:
        attrs = dict(_attributes(server_final))
        return "v" in attrs and hmac.compare_digest(_unb64(attrs["v"]), self._server_signature)
