"""The web console's pages: static files shipped in the package, served at ``/console``.

Nothing is built at install time: ``console/`` beside this module holds plain
HTML, CSS and JavaScript modules (the charts are SVG drawn by ``charts.js``),
read once when the door starts and served from memory. The set of files is
fixed at start (``ASSET_TYPES``): an asset name is one of them or a 400, so no
request names a path on disk.

The pages are public (there is nothing in them but code); every number they
show comes from the JSON admin API (``api.py``, ``admin.py``, ``history.py``)
with the credentials the user typed in, so the console can do exactly what
those credentials may. Each page is sent with a Content-Security-Policy that
allows scripts, styles and requests of this origin only: message bodies are
shown as text, and even a body that slipped into markup could run nothing.
docs/console.md describes the pages.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from .api import problem_resp
from .routing import Param, Resp, Route
from .server import Request, Response

OPTION = "console"  # [http] console = false: no pages and no history sampling

ASSET_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
INDEX = "index.html"
SECURITY_HEADERS = (
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; "
                                "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                                "form-action 'none'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-cache"),
)


def load_assets() -> dict[str, tuple[bytes, str]]:
    """Every file of ``console/`` by name: (bytes, content type)."""
    out: dict[str, tuple[bytes, str]] = {}
    folder = resources.files(__package__).joinpath("console")
    for entry in folder.iterdir():
        name = entry.name
        suffix = name[name.rfind("."):] if "." in name else ""
        if entry.is_file() and suffix in ASSET_TYPES:
            out[name] = (entry.read_bytes(), ASSET_TYPES[suffix])
    if INDEX not in out:
        raise RuntimeError("the console's index.html is missing from the package")
    return out


class WebConsole:
    def __init__(self) -> None:
        self.assets = load_assets()

    def _file(self, name: str) -> Response:
        body, ctype = self.assets[name]
        return Response(200, body, ctype, list(SECURITY_HEADERS))

    async def index(self, req: Request) -> Response:
        if not req.path.endswith("/"):
            # The pages name their files relatively: from /console they would miss them.
            return Response(308, b"", "text/plain", [("Location", "console/")])
        return self._file(INDEX)

    async def asset(self, req: Request) -> Response:
        return self._file(req.params["asset"])

    def routes(self) -> list[Route]:
        html: dict[str, Any] = {"text/html": {"type": "string"}}
        return [
            Route("GET", "/console", self.index, "console",
                  "The web console (its page; /console redirects to /console/)", "console",
                  (), None, True,
                  {200: Resp("The console's page", html),
                   308: Resp("To /console/", None, {"Location": {"type": "string"}})},
                  public=True),
            Route("GET", "/console/{asset}", self.asset, "console_asset",
                  "One of the console's files (scripts, styles)", "console",
                  (Param("asset", "path", {"type": "string",
                                           "enum": sorted(n for n in self.assets if n != INDEX)}),),
                  None, True,
                  {200: Resp("The file", {t.split(";")[0]: {"type": "string"}
                                          for t in sorted(set(ASSET_TYPES.values()))}),
                   404: problem_resp("No such file")},
                  public=True),
        ]
