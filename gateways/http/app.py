"""The HTTP application: route, authenticate, validate, run the handler, answer errors as problems.

Generic over the route table (``api.py`` supplies FerryMQ's): this is where a
``FerryError`` from the core becomes a problem+json, in one place
(``problems.from_ferry_error``), and where every request is observed into
``ferrymq_request_duration_seconds{protocol="http", request=<operationId>}``.

A request with an ``Origin`` header is a browser's: ``cors.py`` decides whether it
may act (the door's own origin and ``[http] cors_origins``) before anything else,
answers ``OPTIONS`` (preflights included: they carry no credentials), and adds
the CORS headers to what an allowed origin gets.

Authentication turns a request into the principal its Broker calls carry
(``Request.principal``): the bearer token's name when tokens are configured,
else anonymous with the client's address. Public routes (health, the OpenAPI
document) carry none: they make no access-checked call.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import time
import weakref
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import parse_qsl

import trio

from ...core.access import MECHANISM_BASIC, MECHANISM_BEARER, Principal, anonymous
from ...core.errors import FerryError
from ...core.metrics import DoorMetrics, MetricsRegistry
from .cors import CorsPolicy, allowed_methods
from .problems import PROBLEM_CONTENT_TYPE, Problem, from_ferry_error
from .routing import Route, Router, coerce
from .server import ClientGone, Limits, Request, Response, StreamResponse

log = logging.getLogger("ferrymq.http")

PROTOCOL = "http"  # messaging.system-style label value for this door


class Authenticator(Protocol):
    """The authentication hook: the name the request proves (its principal's), or None
    to refuse it."""

    def __call__(self, request: Request) -> str | None: ...


def token_name(token: bytes) -> str:
    """A configured token's name in principals and logs: never the token itself, a
    short digest of it (named tokens come with the user model of issue 13)."""
    return "token:" + hashlib.sha256(token).hexdigest()[:12]


class BearerTokens:
    """``Authorization: Bearer <token>`` against a fixed set of tokens (``[http]
    auth_tokens``); comparison in constant time."""

    def __init__(self, tokens: Sequence[str]) -> None:
        if not tokens or not all(isinstance(t, str) and t for t in tokens):
            raise ValueError("[http] auth_tokens must be non-empty strings")
        self._tokens = [(t.encode(), token_name(t.encode())) for t in tokens]

    def __call__(self, request: Request) -> str | None:
        auth = request.header(b"authorization")
        if not auth or auth[:7].lower() != "bearer ":
            return None
        given = auth[7:].strip().encode("latin-1")
        found = None
        for t, name in self._tokens:  # every token compared: the time tells nothing
            if hmac.compare_digest(given, t):
                found = name
        return found


CHALLENGES = (("WWW-Authenticate", 'Bearer realm="ferrymq"'),
              ("WWW-Authenticate", 'Basic realm="ferrymq", charset="UTF-8"'))


class BrokerAuth:
    """``[auth] enabled``: the broker's users. ``Authorization: Bearer <token>`` (an API
    token of the state log, or one of ``[http] auth_tokens``) or ``Basic`` (RFC 7617:
    a user's password, checked against the stored verifier). A request without an
    Authorization header is ``User:ANONYMOUS``: it gets what the ACLs grant the
    anonymous principal, and 401 (with the challenges) where they grant nothing."""

    def __init__(self, broker: Any, static: BearerTokens | None = None) -> None:
        self.broker = broker
        self.static = static

    def identify(self, request: Request) -> tuple[str, str] | None:
        """(name, mechanism) the request proves; ("", "") for no credentials; None
        for credentials that do not pass."""
        auth = request.header(b"authorization")
        if not auth:
            return "", ""
        scheme, _, value = auth.strip().partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == "bearer" and value:
            raw = value.encode("latin-1", "replace")
            if self.static is not None:
                name = self.static(request)
                if name is not None:
                    return name, MECHANISM_BEARER
            user = self.broker.token_user(raw)
            return (user, MECHANISM_BEARER) if user else None
        if scheme == "basic" and value:
            try:
                text = base64.b64decode(value, validate=True).decode("utf-8")
            except (binascii.Error, ValueError):
                return None
            user, sep, password = text.partition(":")
            if sep and user and self.broker.authenticate(user, password.encode()):
                return user, MECHANISM_BASIC
        return None

    def __call__(self, request: Request) -> str | None:
        found = self.identify(request)
        return found[0] if found and found[0] else None


_ENCODE = json.JSONEncoder(separators=(",", ":")).encode  # json.dumps builds one per call


def json_response(doc: Any, status: int = 200, content_type: str = "application/json",
                  headers: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, _ENCODE(doc).encode(), content_type, headers or [])


def problem_response(p: Problem, instance: str | None = None) -> Response:
    return Response(p.status, p.body(instance), PROBLEM_CONTENT_TYPE, list(p.headers))


class HttpApp:
    def __init__(self, routes: Sequence[Route], limits: Limits, metrics: MetricsRegistry,
                 authenticator: Authenticator | None = None,
                 cors: CorsPolicy | None = None) -> None:
        self.router = Router(routes)
        self.limits = limits
        self.authenticator = authenticator
        self.cors = cors or CorsPolicy()
        self.metrics = DoorMetrics(metrics, PROTOCOL)
        self._plans: dict[Route, list[tuple[Any, str, bytes]]] = {}
        self._peers: weakref.WeakKeyDictionary[Any, str | None] = weakref.WeakKeyDictionary()

    def connection_opened(self) -> None:
        self.metrics.connection_opened()

    def connection_closed(self) -> None:
        self.metrics.connection_closed()

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
                    raw = raw.decode("latin-1")
            if raw is None:
                if p.required:
                    raise Problem("invalid_parameter", f"{where} parameter {p.name} is "
                                                       "required")
                continue
            out[p.name] = coerce(p, raw)  # type: ignore[arg-type]
        return out

    def _peer(self, req: Request) -> str | None:
        """The client's "host:port", once per connection."""
        conn = req.conn
        try:
            return self._peers[conn]
        except (KeyError, TypeError):
            pass
        try:
            host, port = conn.stream.socket.getpeername()[:2]
            peer: str | None = f"{host}:{port}"
        except (AttributeError, OSError, ValueError):
            peer = None
        with contextlib.suppress(TypeError):  # not weakly referenceable (a test's stand-in)
            self._peers[conn] = peer
        return peer

    def _principal(self, req: Request) -> Principal:
        """Who the request acts for. Raises the ``unauthorized`` problem when tokens are
        configured and the request has none of them."""
        if self.authenticator is None:
            return anonymous(self._peer(req))
        if isinstance(self.authenticator, BrokerAuth):
            found = self.authenticator.identify(req)
            if found is None:
                raise Problem("unauthorized", "the credentials do not pass", CHALLENGES)
            if not found[0]:
                return anonymous(self._peer(req))
            return Principal(found[0], found[1], self._peer(req))
        name = self.authenticator(req)
        if name is None:
            raise Problem("unauthorized", "a valid bearer token is required",
                          (("WWW-Authenticate", 'Bearer realm="ferrymq"'),))
        return Principal(name, MECHANISM_BEARER, self._peer(req))

    def _options(self, req: Request, origin: str | None) -> Response:
        """OPTIONS: a CORS preflight (``Access-Control-Request-Method``) is answered by the
        policy; any other says which methods the path has (RFC 9110 9.3.7)."""
        methods = self.router.methods(req.path)
        if not methods:
            raise Problem("not_found", f"no route for {req.path}")
        allow = allowed_methods(methods)
        wanted = req.header(b"access-control-request-method")
        if origin is not None and wanted is not None:
            return Response(204, b"", "application/json", self.cors.preflight(
                origin, req.header(b"host"), wanted.strip(),
                req.header(b"access-control-request-headers") or "", allow))
        return Response(204, b"", "application/json", [("Allow", ", ".join(allow))])

    async def handle(self, req: Request) -> Response | StreamResponse:
        t0 = time.perf_counter()
        op = "unmatched"
        origin = req.header(b"origin")
        cross = False  # an allowed cross-origin request: its response carries the CORS headers
        try:
            if origin is not None:
                cross = self.cors.check(origin, req.header(b"host")) \
                    and not self.cors.same_origin(origin, req.header(b"host"))
            if req.method == "OPTIONS":
                op, cross = "options", False  # a preflight's answer has its own headers
                resp: Response | StreamResponse = self._options(req, origin)
                self.metrics.observe(op, time.perf_counter() - t0)
                return resp
            route, path_params = self.router.match(req.method, req.path)
            op = route.operation_id
            req.route = route
            if not route.long:
                req.conn.deadline = trio.current_time() + self.limits.request_timeout_s
            if not route.public:
                req.principal = self._principal(req)
            req.params = self._parse(route, path_params, req)
            resp = await route.handler(req)
        except Problem as p:
            resp = problem_response(p, req.path)
            self.metrics.error(op, p.code)
        except FerryError as exc:
            refusal = from_ferry_error(exc)
            if (exc.code == "permission_denied" and isinstance(self.authenticator, BrokerAuth)
                    and getattr(req.principal, "anonymous", False)):
                # Nobody logged in and the ACLs grant nobody this: ask for credentials.
                refusal = Problem("unauthorized", "credentials are required", CHALLENGES)
            resp = problem_response(refusal, req.path)
            self.metrics.error(op, refusal.code)
        except ClientGone:
            raise
        except Exception:
            log.exception("http handler %s failed", op)
            resp = problem_response(Problem("internal_error"), req.path)
            self.metrics.error(op, "internal_error")
        if cross and origin is not None:
            resp.headers = [*resp.headers, *self.cors.headers(origin)]
        self.metrics.observe(op, time.perf_counter() - t0)
        return resp
