"""The route table: matching, parameter validation, and the OpenAPI 3.1 document built from it.

A ``Route`` declares everything a client may rely on: its parameters with
JSON Schemas, the request bodies it accepts per media type, and every
response per status. The router validates path, query and header parameters
against those schemas before the handler runs (so a handler receives typed
values, and anything else is a 400 problem), and ``openapi()`` renders the
same declarations: the document cannot drift from the routes.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from .problems import PROBLEM_CONTENT_TYPE, PROBLEM_SCHEMA, Problem

Schema = Mapping[str, Any]
MATCH_CACHE_SIZE = 4096  # matched (method, path) pairs kept: topic paths repeat


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    where: str  # "path" | "query" | "header"
    schema: Schema
    required: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        if self.where not in ("path", "query", "header"):
            raise ValueError(f"parameter location {self.where!r}")


@dataclass(frozen=True, slots=True)
class Resp:
    description: str
    content: Mapping[str, Schema] | None = None  # media type -> schema
    headers: Mapping[str, Schema] | None = None


@dataclass(frozen=True, eq=False)  # routes compare (and hash) by identity
class Route:
    method: str
    path: str  # "/v1/topics/{topic}/messages"
    handler: Callable[..., Awaitable[Any]]
    operation_id: str
    summary: str
    tag: str
    params: Sequence[Param] = ()
    body: Mapping[str, Schema] | None = None  # media type -> schema
    body_required: bool = True
    responses: Mapping[int, Resp] = field(default_factory=dict)
    description: str = ""
    public: bool = False  # reachable without a token when auth is on
    long: bool = False  # may wait (long poll, stream): no request deadline
    segments: tuple[str | None, ...] = field(init=False)  # None = a path parameter

    def __post_init__(self) -> None:
        segs = []
        for s in self.path.strip("/").split("/"):
            segs.append(None if s.startswith("{") and s.endswith("}") else s)
        object.__setattr__(self, "segments", tuple(segs))
        names = [s[1:-1] for s in self.path.strip("/").split("/") if s.startswith("{")]
        declared = [p.name for p in self.params if p.where == "path"]
        if names != declared:
            raise ValueError(f"{self.path}: path parameters {names} declared as {declared}")


class Router:
    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes = list(routes)
        self._static: dict[tuple[str, str], Route] = {}
        self._by_len: dict[int, list[Route]] = {}
        self._cache: dict[tuple[str, str], tuple[Route, dict[str, str]]] = {}
        for r in self.routes:
            if None not in r.segments:
                self._static[(r.method, r.path)] = r
            self._by_len.setdefault(len(r.segments), []).append(r)

    def match(self, method: str, raw_path: str) -> tuple[Route, dict[str, str]]:
        """The route and its (percent-decoded) path parameters. Raises Problem
        not_found, or method_not_allowed with the Allow header. The caller must not
        change the parameters returned (they are cached per path)."""
        r = self._static.get((method, raw_path))
        if r is not None:
            return r, {}
        hit = self._cache.get((method, raw_path))
        if hit is not None:
            return hit
        found = self._match(method, raw_path)
        if len(self._cache) >= MATCH_CACHE_SIZE:
            self._cache.clear()  # bounded; hot paths (a few topics) refill at once
        self._cache[(method, raw_path)] = found
        return found

    def _match(self, method: str, raw_path: str) -> tuple[Route, dict[str, str]]:
        parts = raw_path.strip("/").split("/")
        allowed: list[str] = []
        for r in self._by_len.get(len(parts), ()):
            values: dict[str, str] = {}
            names = iter(p.name for p in r.params if p.where == "path")
            for seg, part in zip(r.segments, parts, strict=True):
                if seg is None:
                    if not part:
                        break
                    try:
                        values[next(names)] = unquote(part, errors="strict")
                    except UnicodeDecodeError:
                        raise Problem("invalid_parameter",
                                      "a path segment is not percent-encoded UTF-8") from None
                elif seg != part:
                    break
            else:
                if r.method == method:
                    return r, values
                allowed.append(r.method)
        if allowed:
            if "GET" in allowed:
                allowed.append("HEAD")
            raise Problem("method_not_allowed", f"{method} is not allowed here",
                          (("Allow", ", ".join(sorted(set(allowed)))),))
        raise Problem("not_found", f"no route for {raw_path}")

    def methods(self, raw_path: str) -> list[str]:
        """The methods of the routes whose path matches ``raw_path`` (none: no route),
        for OPTIONS and CORS preflights."""
        parts = raw_path.strip("/").split("/")
        return sorted({r.method for r in self._by_len.get(len(parts), ())
                       if all((seg is None and part) or seg == part
                              for seg, part in zip(r.segments, parts, strict=True))})

    # ------------------------------------------------------------ OpenAPI

    def openapi(self, info: Mapping[str, Any], *, security: bool) -> dict[str, Any]:
        paths: dict[str, dict[str, Any]] = {}
        for r in self.routes:
            op: dict[str, Any] = {"operationId": r.operation_id, "summary": r.summary,
                                  "tags": [r.tag]}
            if r.description:
                op["description"] = r.description
            if r.params:
                op["parameters"] = [_param_doc(p) for p in r.params]
            if r.body is not None:
                op["requestBody"] = {"required": r.body_required, "content": {
                    ct: {"schema": dict(s)} for ct, s in r.body.items()}}
            responses: dict[str, Any] = {}
            for status, resp in sorted(self._responses(r).items()):
                answer: dict[str, Any] = {"description": resp.description}
                if resp.content:
                    answer["content"] = {ct: {"schema": dict(s)} for ct, s in resp.content.items()}
                if resp.headers:
                    answer["headers"] = {h: {"schema": dict(s)} for h, s in resp.headers.items()}
                responses[str(status)] = answer
            op["responses"] = responses
            if security and not r.public:
                op["security"] = [{"bearer": []}]
            paths.setdefault(r.path, {})[r.method.lower()] = op
        doc: dict[str, Any] = {"openapi": "3.1.0", "info": dict(info), "paths": paths,
                               "components": {"schemas": {"Problem": PROBLEM_SCHEMA}}}
        if security:
            doc["components"]["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"}}
        return doc

    def _responses(self, r: Route) -> dict[int, Resp]:
        """The route's own responses plus the problems any route can answer with."""
        problem = {PROBLEM_CONTENT_TYPE: {"$ref": "#/components/schemas/Problem"}}
        common = {400: "Invalid parameters or body", 401: "Missing or wrong bearer token",
                  405: "Method not allowed", 408: "The request took too long to arrive",
                  413: "Request body too large", 431: "Request head too large",
                  503: "Broker not available"}
        if r.body is not None:
            common[415] = "Unsupported media type"
        if any(p.where == "path" for p in r.params):
            common[404] = "Not found"
        common[403] = "The request's Origin is not allowed (CORS: cors_refused)"
        if any(p.name == "topic" for p in r.params):
            common[403] = "The topic's permissions forbid this, or the Origin is not allowed"
        out = {s: Resp(d, problem) for s, d in common.items()}
        out[405] = Resp("Method not allowed", problem, {"Allow": {"type": "string"}})
        out.update(r.responses)
        return out


def _param_doc(p: Param) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": p.name, "in": p.where, "required": p.required or
                           p.where == "path", "schema": dict(p.schema)}
    if p.description:
        doc["description"] = p.description
    return doc


# ---------------------------------------------------------------- validation

_INTEGER = re.compile(r"-?\d{1,18}")
_NUMBER = re.compile(r"-?\d{1,15}(\.\d{1,9})?")


@functools.lru_cache(maxsize=64)
def _pattern(source: str) -> re.Pattern[str]:
    return re.compile(source)


def coerce(p: Param, raw: str) -> Any:
    """A parameter's text as the value its schema describes; raises Problem."""
    s = p.schema
    kind = s.get("type", "string")
    try:
        if kind == "integer":
            if not _INTEGER.fullmatch(raw):
                raise ValueError
            value: Any = int(raw)
        elif kind == "number":
            if not _NUMBER.fullmatch(raw):
                raise ValueError
            value = float(raw)
        elif kind == "boolean":
            if raw not in ("true", "false"):
                raise ValueError
            value = raw == "true"
        else:
            value = raw
    except ValueError:
        raise Problem("invalid_parameter", f"{p.name} must be a {kind}") from None
    if kind in ("integer", "number"):
        if "minimum" in s and value < s["minimum"]:
            raise Problem("invalid_parameter", f"{p.name} must be >= {s['minimum']}")
        if "maximum" in s and value > s["maximum"]:
            raise Problem("invalid_parameter", f"{p.name} must be <= {s['maximum']}")
    elif kind == "string":
        if "enum" in s and value not in s["enum"]:
            raise Problem("invalid_parameter", f"{p.name} must be one of {', '.join(s['enum'])}")
        if len(value) < s.get("minLength", 0) or len(value) > s.get("maxLength", 1 << 30):
            raise Problem("invalid_parameter", f"{p.name} has the wrong length")
        if "pattern" in s and not _pattern(s["pattern"]).search(value):
            raise Problem("invalid_parameter", f"{p.name} does not match {s['pattern']}")
    return value
