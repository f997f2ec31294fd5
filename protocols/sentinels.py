"""``NEED_DATA``: what every codec's ``next_*`` method returns when the bytes it has
do not yet hold a whole frame, packet or event (h11's convention). Feed it more
bytes and ask again. One sentinel for every codec, so a door's read loop reads the
same way whatever the protocol: ``while (ev := conn.next_event()) is not NEED_DATA``.

It is a singleton of its own type (not ``None``: a codec may one day have a
``None`` event, and a type checker can then tell the two apart)."""

from __future__ import annotations

from typing import Final, final


@final
class NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()
