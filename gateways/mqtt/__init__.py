"""The MQTT door: MQTT 3.1, 3.1.1 and 5.0 over TCP (1883) and WebSocket (8083, path /mqtt).

``serve`` binds the listeners, runs the ``Hub`` (sessions, dispatchers,
retained messages) and serves every connection with a ``Client``; see
docs/mqtt.md for the design and the mapping onto the broker. The TCP and
WebSocket listeners share one ``ConnectionSupervisor`` (gateways/supervision.py):
the door's connection caps count both, and whatever a connection raises ends
that connection only. MQTT keeps its own time rules (``connect_timeout``, then
1.5 x the keep alive), enforced by the hub.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from functools import partial
from typing import Any

import trio

from ...core.errors import FerryError
from .client import Client
from .hub import Hub
from .options import MqttOptions
from .websocket import WebSocketStream

log = logging.getLogger("ferrymq.mqtt")

__all__ = ["serve"]


async def serve(ctx: Any, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                ) -> None:
    """Serve MQTT until cancelled; reports the TCP port through ``task_status``."""
    opts = MqttOptions.from_table(ctx.options)
    state_dir = opts.state_dir or os.path.join(ctx.broker.config.data_dir, "mqtt")
    os.makedirs(state_dir, exist_ok=True)
    hub = Hub(ctx.broker, opts, state_dir)
    hub.load()  # the broker's state tables: read on the event-loop thread

    def handle_tcp(stream: Any, watch: Any) -> Any:
        # Not a coroutine of its own: an idle client costs one frame (Client.run).
        return Client(hub, stream, "tcp", watch).run()

    async def handle_ws(stream: Any, watch: Any) -> None:
        ws = WebSocketStream(stream, opts.ws_path)
        ok = False
        with trio.move_on_after(opts.connect_timeout), contextlib.suppress(
                trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            ok = await ws.handshake()
        if not ok:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError,
                                     OSError):
                await stream.aclose()
            return
        await Client(hub, ws, "ws", watch).run()

    connections = ctx.supervisor("mqtt")
    try:
        async with trio.open_nursery() as nursery:
            await ctx.tasks(nursery, "mqtt").start(hub.run, name="hub")
            listeners = await trio.open_tcp_listeners(ctx.port, host=ctx.host)
            port = listeners[0].socket.getsockname()[1]
            await nursery.start(connections.serve, listeners, handle_tcp)
            if opts.ws_port or (connections.tls and connections.tls.config.ws_port is not None):
                ws_plain: list[trio.SocketListener] = []
                if opts.ws_port:
                    try:
                        ws_plain = await trio.open_tcp_listeners(opts.ws_port, host=ctx.host)
                    except OSError as exc:
                        if exc.errno != errno.EADDRINUSE or opts.ws_port_explicit:
                            raise
                        # The default WebSocket port is taken (another broker on this
                        # host): the TCP door still serves; configure ws_port to insist.
                        log.warning("MQTT over WebSocket off: port %d is in use", opts.ws_port)
                    else:
                        ctx.bound["mqtt-ws"] = ws_plain[0].socket.getsockname()[1]
                # WSS (the TLS settings' ws_port) is served next to the plain WebSocket.
                await nursery.start(partial(connections.serve, ws_plain, handle_ws,
                                            tls_listener="ws_port"))
            task_status.started(port)
    finally:
        try:
            hub.save_sync()  # state-log appends: on the event-loop thread, the broker open
        except FerryError as exc:
            log.error("MQTT state not saved at shutdown: %s", exc)
