"""The peer of ``ferrymq bench http``: the smallest server on the door's own stack (trio and
``protocols.http.h1``), answering every request with the same small JSON body (run as
``python -m ferrymq.gateways.bench.http_peer PORT``)."""

from __future__ import annotations

import sys

import trio
from ferrymq.protocols.http import h1

BODY = b'{"status":"ok"}'
RESPONSE = h1.response_head(200, [("content-type", "application/json")], len(BODY)) + BODY
RECV_BYTES = 64 * 1024


async def handler(stream: trio.SocketStream) -> None:
    conn = h1.ServerConnection()
    try:
        while True:
            ev = conn.next_event()
            if ev is h1.NEED_DATA:
                data = await stream.receive_some(RECV_BYTES)
                if not data:
                    return
                conn.receive_data(data)
            elif ev is h1.END:
                await stream.send_all(RESPONSE)
    except (trio.BrokenResourceError, h1.HttpProtocolError):
        return


if __name__ == "__main__":
    trio.run(trio.serve_tcp, handler, int(sys.argv[1]))
