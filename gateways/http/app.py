"""The HTTP application: route, authenticate, validate, run the handler, answer errors as problems.

Generic over the route table (``api.py`` supplies FerryMQ's): this is where a
``FerryError`` from the core becomes a problem+json, in one place
(``problems.from_ferry_error``), and where every request is observed into
``ferrymq_request_duration_seconds{protocol="http", request=<operationId>}``.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import parse_qsl

import trio

from ...core.errors import FerryError
from ...core.metrics import MetricsRegistry
from .problems import PROBLEM_CONTENT_TYPE, Problem, from_ferry_error
from .routing import Route, Router, coerce
from .server import ClientGone, Limits, Request, Response, StreamResponse

log = logging.getLogger("ferrymq.http")

PROTOCOL = "http"  # messaging.system-style label value for this door


class Authenticator(Protocol):
    """The authentication hook: True lets the request through."""

    def __call__(self, request: Request) -> bool: ...


class BearerTokens:
    """``Authorization: Bearer <token>`` against a fixed set of tokens (``[http]
    auth_tokens``); comparison in constant time."""

    def __init__(self, tokens: Sequence[str]) -> None:
        if not tokens or not all(isinstance(t, str) and t for t in tokens):
            raise ValueError("[http] auth_tokens must be non-empty strings")
        self._tokens = [t.encode() for t in tokens]

    def __call__(self, request: Request) -> bool:
        auth = request.header(b"authorization")
        if not auth or auth[:7].lower() != "bearer ":
            return False
        given = auth[7:].strip().encode("latin-1")
        ok = False
        for t in self._tokens:
            ok |= hmac.compare_digest(given, t)
        return ok


def json_response(doc: Any, status: int = 200, content_type: str = "application/json",
                  headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, json.dumps(doc, separators=(",", ":")).encode(), content_type,
                    headers or [])


def problem_response(p: Problem, instance: str | None = None) -> Response:
    return Response(p.status, p.body(instance), PROBLEM_CONTENT_TYPE, list(p.headers))


class HttpApp:
    def __init__(self, routes: Sequence[Route], limits: Limits, metrics: MetricsRegistry,
                 authenticator: Authenticator | None = None) -> None:
        self.router = Router(routes)
        self.limits = limits
        self.authenticator = authenticator
        self._latency = metrics.histogram(
            "ferrymq_request_duration_seconds",
            "Time to answer a request, per protocol and request (operation).",
            ("protocol", "request"))
        self._errors = metrics.counter(
            "ferrymq_request_errors_total",
            "Requests answered with an error, per protocol, request and error code.",
            ("protocol", "request", "error"))
        self._connections = metrics.gauge(
            "ferrymq_connections", "Open client connections, per protocol.",
            ("protocol",)).labels(PROTOCOL)
        self._accepted = metrics.counter(
            "ferrymq_connections_accepted_total", "Connections accepted, per protocol.",
            ("protocol",)).labels(PROTOCOL)
        self._observers: dict[str, Any] = {}
        self._plans: dict[Route, list[tuple[Any, str, bytes]]] = {}

    def connection_opened(self) -> None:
        self._connections.inc()
        self._accepted.inc()

    def connection_closed(self) -> None:
        self._connections.dec()

    def _parse(self, route: Route, path_params: dict[str, str], req: Request) -> dict[str, Any]:
        out: dict[str, Any] = {}
        query: dict[str, str] = {}
        if req.query:
            try:
                pairs = parse_qsl(req.query, keep_blank_values=True, strict_parsing=False,
                                  errors="strict", max_num_fields=64)
            except (ValueError, UnicodeDecodeError):
                raise Problem("invalid_parameter", "the query string is malformed") from None
            for k, v in pairs:
                if k in query:
                    raise Problem("invalid_parameter", f"{k} is given twice")
                query[k] = v
        plan = self._plans.get(route)
        if plan is None:
            plan = self._plans[route] = [(p, p.where, p.name.lower().encode())
                                         for p in route.params]
        headers = req.headers
        for p, where, key in plan:
            if where == "path":
                raw: str | bytes | None = path_params[p.name]
            elif where == "query":
                raw = query.get(p.name)
            else:
                raw = headers.get(key)
                if raw is not None:
                    raw = raw.decode("latin-1")  # type: ignore[union-attr]
            if raw is None:
                if p.required:
                    raise Problem("invalid_parameter", f"{where} parameter {p.name} is "
                                                       "required")
                continue
            out[p.name] = coerce(p, raw)  # type: ignore[arg-type]
        return out

    async def handle(self, req: Request) -> Response | StreamResponse:
        t0 = time.perf_counter()
        op = "unmatched"
        try:
            route, path_params = self.router.match(req.method, req.path)
            op = route.operation_id
            req.route = route
            if not route.long:
                req.conn.deadline = trio.current_time() + self.limits.request_timeout_s
            if (self.authenticator is not None and not route.public
                    and not self.authenticator(req)):
                raise Problem("unauthorized", "a valid bearer token is required",
                              (("WWW-Authenticate", 'Bearer realm="ferrymq"'),))
            req.params = self._parse(route, path_params, req)
            resp = await route.handler(req)
        except Problem as p:
            resp = problem_response(p, req.path)
            self._errors.labels(PROTOCOL, op, p.code).inc()
        except FerryError as exc:
            p = from_ferry_error(exc)
            resp = problem_response(p, req.path)
            self._errors.labels(PROTOCOL, op, p.code).inc()
        except ClientGone:
            raise
        except Exception:
            log.exception("http handler %s failed", op)
            resp = problem_response(Problem("internal_error"), req.path)
            self._errors.labels(PROTOCOL, op, "internal_error").inc()
        obs = self._observers.get(op)
        if obs is None:
            obs = self._observers[op] = self._latency.labels(PROTOCOL, op)
        obs.observe(time.perf_counter() - t0)
        return resp
