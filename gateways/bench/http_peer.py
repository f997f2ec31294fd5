"""The peer of ``ferrymq bench http``: the smallest h11-on-trio server, answering every request
with the same small JSON body (run as ``python -m ferrymq.gateways.bench.http_peer PORT``)."""

from __future__ import annotations

import sys

import h11
import trio

BODY = b'{"status":"ok"}'
RECV_BYTES = 64 * 1024


async def _next(conn: h11.Connection, stream: trio.SocketStream) -> object:
    while True:
        ev = conn.next_event()
        if ev is not h11.NEED_DATA:
            return ev
        conn.receive_data(await stream.receive_some(RECV_BYTES))


async def handler(stream: trio.SocketStream) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            ev = await _next(conn, stream)
            if not isinstance(ev, h11.Request):
                return
            while not isinstance(await _next(conn, stream), h11.EndOfMessage):
                pass
            out = conn.send(h11.Response(status_code=200, headers=[
                ("content-type", "application/json"), ("content-length", str(len(BODY)))]))
            out += conn.send(h11.Data(data=BODY)) + conn.send(h11.EndOfMessage())  # type: ignore[operator]
            await stream.send_all(out)  # type: ignore[arg-type]
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
    except (trio.BrokenResourceError, h11.RemoteProtocolError):
        return


if __name__ == "__main__":
    trio.run(trio.serve_tcp, handler, int(sys.argv[1]))
