"""CORS: which web pages of other origins may call this door, and the headers that tell a browser.

A browser sends ``Origin`` with every cross-origin request (and with same-origin
requests that are not GET or HEAD). The policy answers three questions, with
no I/O (``app.py`` asks them):

- ``check(origin, host)``: may a request carrying this ``Origin`` act at all? The
  door's own origin (the console's pages) and the configured ones may; any other
  is refused with 403 ``cors_refused`` *before* the handler runs. Without that, a
  page of any site could make a visitor's browser produce, pop or resend through
  a broker the visitor reaches (a "simple" POST is sent without asking first);
  the browser would only hide the answer. A request without ``Origin`` (curl,
  client libraries, a browser's same-origin GET) is not a CORS request.
- ``preflight(...)``: the answer to ``OPTIONS`` with ``Access-Control-Request-
  Method``: 204 with the allowed methods (those the route table has for the
  path), request headers and how long the browser may cache the answer; 403
  ``cors_refused`` naming what is not allowed.
- ``headers(origin)``: what an allowed cross-origin response carries:
  ``Access-Control-Allow-Origin`` (the origin itself, or ``*`` when any origin
  is allowed and no credentials are), ``Vary: Origin``, the exposed headers,
  and ``Access-Control-Allow-Credentials`` when configured.

Options (``[http]``): ``cors_origins`` (a list of ``scheme://host[:port]``, ``"*"``
for any, ``"null"`` for opaque origins), ``cors_allow_credentials`` (false;
never with ``"*"``: a page of any site could then act with a visitor's
cookies or cached Basic credentials), ``cors_max_age_s`` (600).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .problems import Problem

OPTIONS = ("cors_origins", "cors_allow_credentials", "cors_max_age_s")
DEFAULT_MAX_AGE_S = 600  # Chromium caps a preflight's cache at 2 hours, Firefox at 24
MAX_MAX_AGE_S = 86_400

# Request headers a page may send (what the API reads): its own FerryMQ-* and ce-* headers
# by prefix; the CORS-safelisted ones (Accept, Content-Type...) need no permission but a
# Content-Type outside the three form types does, so it is listed too.
ALLOWED_HEADERS = frozenset(("accept", "authorization", "content-type", "last-event-id",
                             "cache-control", "x-requested-with"))
ALLOWED_HEADER_PREFIXES = ("ferrymq-", "ce-")
# Response headers a page may read besides the safelisted ones.
EXPOSED_HEADERS = "Location, Retry-After, WWW-Authenticate, Allow"

_ORIGIN = re.compile(r"^(https?)://([a-z0-9.-]+|\[[0-9a-f:.]+\])(?::(\d{1,5}))?$")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+$")  # an HTTP header name (RFC 9110 token)
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def normalize_origin(text: str) -> str | None:
    """An origin as a browser serialises it (lower-case, no default port), or None when
    ``text`` is no ``scheme://host[:port]``."""
    m = _ORIGIN.match(text.strip().lower())
    if m is None:
        return None
    scheme, host, port = m.groups()
    if port is not None and int(port) > 65535:
        return None
    if port is not None and int(port) == int(_DEFAULT_PORTS[scheme]):
        port = None
    return f"{scheme}://{host}" + (f":{port}" if port else "")


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    origins: frozenset[str] = frozenset()
    any_origin: bool = False
    credentials: bool = False
    max_age_s: int = DEFAULT_MAX_AGE_S

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> CorsPolicy:
        """The policy of the ``[http]`` options; raises ValueError for a bad one (the
        server refuses to start rather than serve a policy it misread)."""
        raw = options.get("cors_origins", [])
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not all(isinstance(o, str) for o in raw):
            raise ValueError("[http] cors_origins must be a list of origins")
        origins: set[str] = set()
        any_origin = False
        for o in raw:
            if o.strip() == "*":
                any_origin = True
            elif o.strip() == "null":
                origins.add("null")
            else:
                norm = normalize_origin(o)
                if norm is None:
                    raise ValueError(f"[http] cors_origins: {o!r} is not an origin "
                                     "(scheme://host[:port], no path), '*' or 'null'")
                origins.add(norm)
        credentials = options.get("cors_allow_credentials", False)
        if not isinstance(credentials, bool):
            raise ValueError("[http] cors_allow_credentials must be true or false")
        if credentials and any_origin:
            raise ValueError("[http] cors_allow_credentials needs the origins listed, not '*'")
        max_age = options.get("cors_max_age_s", DEFAULT_MAX_AGE_S)
        if isinstance(max_age, bool) or not isinstance(max_age, int) \
                or not 0 <= max_age <= MAX_MAX_AGE_S:
            raise ValueError(f"[http] cors_max_age_s must be 0..{MAX_MAX_AGE_S}")
        return cls(frozenset(origins), any_origin, credentials, max_age)

    # ------------------------------------------------------------ questions

    def allowed(self, origin: str) -> bool:
        """Whether ``origin`` is one of the configured origins (or any is allowed)."""
        if self.any_origin:
            return True
        if origin == "null":
            return "null" in self.origins
        norm = normalize_origin(origin)
        return norm is not None and norm in self.origins

    @staticmethod
    def same_origin(origin: str, host: str | None) -> bool:
        """Whether ``origin`` is the door's own: the host (and port) the request was
        sent to. The scheme is not compared: behind a TLS proxy the door cannot know
        it, and one port serves one scheme."""
        if not host or origin == "null":
            return False
        norm = normalize_origin(origin)
        if norm is None:
            return False
        scheme, _, rest = norm.partition("://")
        want = host.strip().lower()
        if ":" not in want.rsplit("]", 1)[-1]:
            want += ":" + _DEFAULT_PORTS[scheme]
        if ":" not in rest.rsplit("]", 1)[-1]:
            rest += ":" + _DEFAULT_PORTS[scheme]
        return rest == want

    def check(self, origin: str, host: str | None) -> bool:
        """Whether a request carrying ``Origin: origin`` may act; True means "allowed
        cross-origin" or same origin. Raises the ``cors_refused`` problem."""
        if self.same_origin(origin, host) or self.allowed(origin):
            return True
        raise Problem("cors_refused", f"origin {origin[:200]} is not allowed "
                                      "([http] cors_origins)")

    def headers(self, origin: str) -> list[tuple[str, str]]:
        """The headers of an allowed cross-origin response."""
        out = [("Access-Control-Allow-Origin",
                "*" if self.any_origin and not self.credentials else origin),
               ("Access-Control-Expose-Headers", EXPOSED_HEADERS)]
        if not self.any_origin or self.credentials:
            out.append(("Vary", "Origin"))
        if self.credentials:
            out.append(("Access-Control-Allow-Credentials", "true"))
        return out

    def preflight(self, origin: str, host: str | None, method: str, request_headers: str,
                  methods: Sequence[str]) -> list[tuple[str, str]]:
        """The headers of the 204 answering a preflight for ``method`` with
        ``request_headers`` (the Access-Control-Request-Headers list) on a path whose
        routes have ``methods``. Raises the ``cors_refused`` problem."""
        self.check(origin, host)
        if method not in methods:
            raise Problem("cors_refused", f"{method[:20]} is not a method of this path "
                                          f"({', '.join(methods)})")
        names = _header_names(request_headers)
        refused = [n for n in names if not _header_allowed(n)]
        if refused:
            raise Problem("cors_refused", f"request header(s) not allowed: "
                                          f"{', '.join(refused)[:200]}")
        out = self.headers(origin)
        out += [("Access-Control-Allow-Methods", ", ".join(methods)),
                ("Access-Control-Max-Age", str(self.max_age_s)),
                ("Vary", "Access-Control-Request-Method, Access-Control-Request-Headers")]
        if names:
            out.append(("Access-Control-Allow-Headers", ", ".join(names)))
        return out


def _header_names(text: str) -> list[str]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if len(names) > 64 or not all(_TOKEN.match(n) for n in names):
        raise Problem("cors_refused", "Access-Control-Request-Headers is not a list of "
                                      "header names")
    return list(dict.fromkeys(names))


def _header_allowed(name: str) -> bool:
    return name in ALLOWED_HEADERS or name.startswith(ALLOWED_HEADER_PREFIXES)


def allowed_methods(route_methods: Iterable[str]) -> list[str]:
    """The methods a path answers: its routes', HEAD with GET, and OPTIONS."""
    out = sorted(set(route_methods))
    if "GET" in out:
        out.append("HEAD")
    return [*sorted(set(out)), "OPTIONS"]
