"""SCRAM as RFC 7677 and RFC 5802 specify it: the RFC's test vectors, then what a
server must refuse."""

from __future__ import annotations

import base64

import pytest
from ferrymq.protocols.scram import (
    ScramClient,
    ScramError,
    ScramServer,
    ServerState,
    check_password,
    make_verifier,
)

# RFC 7677 section 3 (SCRAM-SHA-256): user "user", password "pencil".
C_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
S_FIRST = (b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
           b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
C_FINAL = (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
           b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
S_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")


class FixedNonceServer(ScramServer):
    def __init__(self) -> None:
        super().__init__("SCRAM-SHA-256")
        self._snonce = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"


def test_rfc7677_vector_server_side() -> None:
    v = make_verifier("SCRAM-SHA-256", b"pencil", salt=SALT, iterations=4096)
    s = FixedNonceServer()
    assert s.first(C_FIRST) == "user"
    assert s.challenge(v) == S_FIRST
    assert s.final(C_FINAL) == S_FINAL
    assert s.state is ServerState.DONE


def test_rfc7677_vector_client_side() -> None:
    c = ScramClient("SCRAM-SHA-256", "user", "pencil", nonce="rOprNGfwEbeRWgbNEkqO")
    assert c.first() == C_FIRST
    assert c.final(S_FIRST) == C_FINAL
    assert c.verify(S_FINAL)


@pytest.mark.parametrize("mech", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_a_round_trip_and_plain_passwords_against_the_verifier(mech: str) -> None:
    v = make_verifier(mech, "sésame".encode())
    c = ScramClient(mech, "a,b=c", "sésame")
    s = ScramServer(mech)
    assert s.first(c.first()) == "a,b=c"
    assert c.verify(s.final(c.final(s.challenge(v))))
    assert check_password(v, "sésame".encode()) and not check_password(v, b"sesame")


def test_a_wrong_password_is_an_invalid_proof() -> None:
    v = make_verifier("SCRAM-SHA-512", b"right")
    c = ScramClient("SCRAM-SHA-512", "u", "wrong")
    s = ScramServer("SCRAM-SHA-512")
    s.first(c.first())
    with pytest.raises(ScramError, match="invalid-proof"):
        s.final(c.final(s.challenge(v)))
    assert s.state is ServerState.FAILED


def test_an_unknown_user_gets_a_challenge_and_then_invalid_proof() -> None:
    c = ScramClient("SCRAM-SHA-256", "ghost", "x")
    s = ScramServer("SCRAM-SHA-256")
    s.first(c.first())
    first = s.challenge(None)
    assert b",i=4096" in first
    with pytest.raises(ScramError, match="invalid-proof"):
        s.final(c.final(first))


@pytest.mark.parametrize("garbage", [
    b"", b"\xff\xfe", b"p=tls-unique,,n=u,r=x", b"n,,r=x,n=u", b"n,,n=u", b"n,,n=,r=x",
    b"n,,n=a=b,r=x", b"n,,m=ext,n=u,r=x", b"x" * 5000, b"n,,n=u,r=x,m=1",
])
def test_garbage_client_first_fails_the_exchange(garbage: bytes) -> None:
    s = ScramServer("SCRAM-SHA-256")
    with pytest.raises(ScramError):
        s.first(garbage)
        s.challenge(None)
        s.final(b"c=biws,r=x,p=AAAA")
    assert s.state is not ServerState.DONE


@pytest.mark.parametrize("final", [
    b"", b"c=biws", b"c=biws,r=WRONG,p=AAAA", b"c=!!,r={n},p=AAAA", b"c=biws,r={n},p=!!",
    b"c=cD10bHMtdW5pcXVlLCw=,r={n},p=AAAA",
])
def test_garbage_client_final_fails_the_exchange(final: bytes) -> None:
    v = make_verifier("SCRAM-SHA-256", b"pw")
    c = ScramClient("SCRAM-SHA-256", "u", "pw")
    s = ScramServer("SCRAM-SHA-256")
    s.first(c.first())
    first = s.challenge(v)
    nonce = dict(p.split("=", 1) for p in first.decode().split(","))["r"]
    with pytest.raises(ScramError):
        s.final(final.replace(b"{n}", nonce.encode()))
    with pytest.raises(ScramError):  # and nothing after a failure
        s.final(c.final(first))


def test_librdkafkas_doubled_client_nonce_is_accepted_and_nothing_else() -> None:
    """librdkafka before 2.6.1 (Debian's kcat) sends r=<client nonce><server's r>."""
    v = make_verifier("SCRAM-SHA-256", b"pw")
    c = ScramClient("SCRAM-SHA-256", "u", "pw", double_nonce=True)
    s = ScramServer("SCRAM-SHA-256")
    s.first(c.first())
    assert c.verify(s.final(c.final(s.challenge(v))))
    s = ScramServer("SCRAM-SHA-256")
    c = ScramClient("SCRAM-SHA-256", "u", "pw", nonce="cnonce")
    s.first(c.first())
    first = s.challenge(v)
    final = c.final(first).replace(b"r=cnonce", b"r=xxcnonce", 1)
    with pytest.raises(ScramError):  # any other nonce is still refused
        s.final(final)
