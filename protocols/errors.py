"""The one base of every codec error, and who broke the protocol (h11's convention).

Every exception a codec in ``protocols/`` raises derives from ``ProtocolError`` and
says its side:

- ``RemoteProtocolError``: the peer broke the protocol (bytes that do not decode, a
  frame past a limit, a packet the state machine forbids). A door answers with its
  protocol's own error where one can still be sent, then closes the connection.
- ``LocalProtocolError``: we were asked to send something the protocol forbids (a
  value that does not fit its field, a packet the state machine does not allow
  now). It is a bug of the caller, never the peer's fault: a door logs it and
  closes the connection, and a test should have caught it.

Each codec keeps its own classes (``kafka.records.RecordsError``,
``mqtt.codec.MalformedPacket``, ...) for the detail its doors map; they derive
from one side here. Classes that were ``ValueError`` before still are, for the
callers that catch ``ValueError``. ``tests/test_codec_errors.py`` checks every
exception class in ``protocols/`` against this.
"""

from __future__ import annotations

from typing import ClassVar, Literal


class ProtocolError(Exception):
    """A codec's error; ``side`` says who broke the protocol: "remote" or "local"."""

    side: ClassVar[Literal["remote", "local"]]


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol."""

    side = "remote"


class LocalProtocolError(ProtocolError):
    """We were asked to send what the protocol forbids: a bug of the caller."""

    side = "local"
