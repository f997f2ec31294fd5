"""RocketMQ's ACL request signature (AclClientRPCHook / the C++ client's ClientRPCHook).

A signed request carries ``AccessKey``, ``Signature`` and optionally
``SecurityToken`` (Java) or ``OnsChannel`` (the C++ client) among its ext fields.
The signature is Base64(HMAC-SHA1(SecretKey, content)), where content is the
values of every ext field but ``Signature`` (and ``_UNIQUE_KEY_QUERY``, which the
Java broker also leaves out), in the order of their names, concatenated, then
the body: what both the Java and the C++ client compute over the fields they
send, and what the Java broker checks. Sans-I/O: values in, bool out.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
from collections.abc import Mapping

from .frame import _ext_str

ACCESS_KEY = "AccessKey"
SIGNATURE = "Signature"
SECURITY_TOKEN = "SecurityToken"
CHANNEL = "OnsChannel"
_UNSIGNED = frozenset({SIGNATURE, "_UNIQUE_KEY_QUERY"})
DEFAULT_CHANNEL = "ALIYUN"  # the C++ client's default channel


def content(ext_fields: Mapping[str, object], body: bytes) -> bytes:
    """The bytes a signature covers."""
    parts = [_ext_str(ext_fields[k]).encode("utf-8") for k in sorted(ext_fields)
             if k not in _UNSIGNED and ext_fields[k] is not None]
    parts.append(bytes(body))
    return b"".join(parts)


@functools.lru_cache(maxsize=1024)
def _keyed(secret: str) -> hmac.HMAC:
    """The HMAC state after the key (copied per request: the key schedule once per secret)."""
    return hmac.new(secret.encode("utf-8"), digestmod=hashlib.sha1)


def signature(secret: str, ext_fields: Mapping[str, object], body: bytes) -> str:
    mac = _keyed(secret).copy()
    mac.update(content(ext_fields, body))
    return base64.b64encode(mac.digest()).decode("ascii")


def verify(secret: str, ext_fields: Mapping[str, object], body: bytes) -> bool:
    given = ext_fields.get(SIGNATURE)
    if not isinstance(given, str) or not given:
        return False
    return hmac.compare_digest(given.encode(), signature(secret, ext_fields, body).encode())


def sign(ext_fields: Mapping[str, object], body: bytes, access_key: str, secret: str,
         security_token: str | None = None) -> dict[str, object]:
    """``ext_fields`` with AccessKey (and SecurityToken) added and signed."""
    out = {k: v for k, v in ext_fields.items() if v is not None and k != SIGNATURE}
    out[ACCESS_KEY] = access_key
    if security_token:
        out[SECURITY_TOKEN] = security_token
    out[SIGNATURE] = signature(secret, out, body)
    return out
