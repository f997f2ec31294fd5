"""The HTTP door: JSON over HTTP/1.1 for curl, browsers and any language (docs/http.md).

``serve`` binds the listener and serves the route table of ``api.py`` through
the HTTP/1.1 connection loop of ``server.py``. Options (the ``[http]`` table): the
limits of ``server.Limits`` by name, ``auth_tokens`` (a list of bearer
tokens; with ``[auth] enabled`` the broker's API tokens and users' Basic
credentials too: docs/security.md), the CORS policy (``cors.OPTIONS``:
which web pages of other origins may call the door), the web console
(``console``, on by default, and ``history.OPTIONS``: how often and how long
its charts' samples are kept), and the connection limits the door's supervisor
enforces (``max_connections``, ``max_connections_per_address``,
``pre_auth_max_bytes``: docs/operations.md, "Connection limits").
"""

from __future__ import annotations

from typing import Any

import trio

from ..config import LIMIT_KEYS
from ..server import DoorContext
from . import cors, history, webconsole
from .admin import AdminApi
from .api import Api
from .app import BearerTokens, BrokerAuth, HttpApp
from .security import SecurityApi
from .server import WATCHDOG_TICK_S, Limits, refuse, serve_connections, supervisor_limits

API_INFO = {
    "title": "FerryMQ HTTP API",
    "version": "1",
    "description": "Produce, pop-style consume with long polling, acks, server-sent-event "
                   "streams, reads by offset, admin, health and metrics (docs/http.md).",
    "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
}


OTHER_OPTIONS = ("auth_tokens", webconsole.OPTION, *cors.OPTIONS, *history.OPTIONS)


def build_app(ctx: DoorContext) -> tuple[HttpApp, history.History | None]:
    """The application serving the door's routes, and the console's history sampler
    (None with ``console = false``). Raises ValueError for a bad option."""
    options: dict[str, Any] = dict(ctx.options)
    limits = Limits.from_options(options, others=(*OTHER_OPTIONS, *LIMIT_KEYS["http"]))
    tokens = options.get("auth_tokens")
    if isinstance(tokens, str):
        tokens = [tokens]
    fixed = BearerTokens(tokens) if tokens else None
    auth: BearerTokens | BrokerAuth | None = (BrokerAuth(ctx.broker, fixed)
                                              if ctx.broker.auth_enabled else fixed)
    console = options.get(webconsole.OPTION, True)
    if not isinstance(console, bool):
        raise ValueError("[http] console must be true or false")
    api = Api(ctx.broker, limits, API_INFO, security=auth is not None)
    api.routes += AdminApi(ctx.broker).routes()
    api.routes += SecurityApi(ctx.broker).routes()
    sampler = None
    if console:
        sampler = history.History(ctx.broker, options)
        api.routes += sampler.routes() + webconsole.WebConsole().routes()
    app = HttpApp(api.routes, limits, ctx.broker.metrics, auth, cors.CorsPolicy.from_options(options))
    return app, sampler


async def serve(ctx: DoorContext, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                ) -> None:
    app, sampler = build_app(ctx)
    listeners = await trio.open_tcp_listeners(ctx.port, host=ctx.host or None)
    port = listeners[0].socket.getsockname()[1]
    connections = ctx.supervisor("http", refuse=refuse, tick_s=WATCHDOG_TICK_S)
    connections.limits = supervisor_limits(connections.limits, app.limits)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_connections, listeners, app, connections)
        if sampler is not None:
            ctx.tasks(nursery, "http").start_soon(sampler.run, name="console_history")
        task_status.started(port)
