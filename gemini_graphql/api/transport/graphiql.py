"""The GraphiQL page at /graphql for browsers, and the files it loads from /graphiql/assets/,
outside production (404 there: no page, and no asset route at all).

The page is Strawberry's GraphiQL template (strawberry/static/graphiql.html, Strawberry
0.341) copied to graphiql_assets/graphiql.html with its unpkg.com URLs pointing here: the code
it runs (React, GraphiQL with the graphql-ws client bundled in, the explorer plugin) is
vendored next to it, so the page works with no internet. Its integrity attributes are the
template's, unchanged: the browser checks each file against them, and this module checks
them too before serving a file (a mismatch is an error here, not a page stuck on "Loading...").
The URLs carry the versions, so the files are served as immutable.

Operations never come here: `api.http` and `api.websocket` serve them.

To move to other versions: `npm pack <package>@<version>` for each, copy the file at the
unpkg path into graphiql_assets/ (name below), update ASSETS and the template copy from the
new Strawberry template, and run tests/test_graphiql_assets.py and test_graphiql_browser.py.
"""

from __future__ import annotations

import base64
import hashlib
import html
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from gemini_graphql.config import Settings

ASSET_DIR = Path(__file__).with_name("graphiql_assets")
ASSETS_PATH = "/graphiql/assets"
PLACEHOLDER = "{{ assets }}"  # in the template copy, where the unpkg URLs' prefix was
IMMUTABLE = "public, max-age=31536000, immutable"
CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css"}  # Starlette adds the charset


@dataclass(frozen=True, slots=True)
class Asset:
    name: str  # the file in graphiql_assets/, and the last segment of its URL
    source: str  # where Strawberry's template loads it from (npm package@version/path)
    integrity: str  # the template's integrity attribute for it


ASSETS = (
    Asset(
        "react-18.2.0.production.min.js",
        "https://unpkg.com/react@18.2.0/umd/react.production.min.js",
        "sha384-tMH8h3BGESGckSAVGZ82T9n90ztNXxvdwvdM6UoR56cYcf+0iGXBliJ29D+wZ/x8",
    ),
    Asset(
        "react-dom-18.2.0.production.min.js",
        "https://unpkg.com/react-dom@18.2.0/umd/react-dom.production.min.js",
        "sha384-bm7MnzvK++ykSwVJ2tynSE5TRdN+xL418osEVF2DE/L/gfWHj91J2Sphe582B1Bh",
    ),
    Asset(
        "js-cookie-3.0.5.min.js",
        "https://unpkg.com/js-cookie@3.0.5/dist/js.cookie.min.js",
        "sha384-/vxhYfM1LENRhdpZ8dwEsQn/X4VhpbEZSiU4m/FwR+PVpzar4fkEOw8FP9Y+OfQN",
    ),
    Asset(
        "graphiql-3.8.3.min.css",
        "https://unpkg.com/graphiql@3.8.3/graphiql.min.css",
        "sha384-Mq3vbRBY71jfjQAt/DcjxUIYY33ksal4cgdRt9U/hNPvHBCaT2JfJ/PTRiPKf0aM",
    ),
    Asset(
        "graphiql-plugin-explorer-1.0.2.css",
        "https://unpkg.com/@graphiql/plugin-explorer@1.0.2/dist/style.css",
        "sha384-5DFJlDPW2tSATRbM8kzoP1j194jexLswuNmClWoRr2Q0x7R68JIQzPHZ02Faktwi",
    ),
    Asset(
        "graphiql-3.8.3.min.js",
        "https://unpkg.com/graphiql@3.8.3/graphiql.min.js",
        "sha384-HbRVEFG0JGJZeAHCJ9Xm2+tpknBQ7QZmNlO/DgZtkZ0aJSypT96YYGRNod99l9Ie",
    ),
    Asset(
        "graphiql-plugin-explorer-1.0.2.umd.js",
        "https://unpkg.com/@graphiql/plugin-explorer@1.0.2/dist/index.umd.js",
        "sha384-2oonKe47vfHIZnmB6ZZ10vl7T0Y+qrHQF2cmNTaFDuPshpKqpUMGMc9jgj9MLDZ9",
    ),
)


def sha384_integrity(body: bytes) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(body).digest()).decode("ascii")


@dataclass(frozen=True, slots=True)
class _Loaded:
    body: bytes
    media_type: str
    etag: str


@cache
def _loaded() -> dict[str, _Loaded]:
    """The files, read and checked once per process, on first use (never in production)."""
    loaded = {}
    for asset in ASSETS:
        body = (ASSET_DIR / asset.name).read_bytes()
        if (got := sha384_integrity(body)) != asset.integrity:
            raise RuntimeError(f"{asset.name} is not the file GraphiQL expects: {got}")
        etag = '"' + hashlib.sha384(body).hexdigest()[:32] + '"'
        loaded[asset.name] = _Loaded(body, CONTENT_TYPES[Path(asset.name).suffix], etag)
    return loaded


async def _asset(request: Request) -> Response:
    found = _loaded().get(request.path_params["name"])
    if found is None:
        raise HTTPException(404)
    headers = {"cache-control": IMMUTABLE, "etag": found.etag}
    asked = request.headers.get("if-none-match", "")
    if found.etag in (tag.strip().removeprefix("W/") for tag in asked.split(",")):
        return Response(status_code=304, headers=headers)
    return Response(found.body, headers=headers, media_type=found.media_type)


def graphiql_routes(settings: Settings) -> list[BaseRoute]:
    """GET /graphiql/assets/<name>, outside production; nothing there (the router's 404)."""
    if settings.is_production:
        return []
    return [Route(ASSETS_PATH + "/{name}", _asset, methods=["GET"], name="graphiql_asset")]


@lru_cache(maxsize=8)
def _page(root_path: str) -> str:
    template = (ASSET_DIR / "graphiql.html").read_text(encoding="utf-8")
    return template.replace(PLACEHOLDER, html.escape(root_path + ASSETS_PATH))


class GraphiQLPage:
    """The page (what `api.http` hands a browser's GET); 404 in production."""

    def __init__(self, settings: Settings) -> None:
        self._production = settings.is_production

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._production:
            response: Response = PlainTextResponse("Not Found", status_code=404)
        else:
            response = HTMLResponse(_page(scope.get("root_path", "")))
        await response(scope, receive, send)


def graphiql(settings: Settings) -> GraphiQLPage:
    return GraphiQLPage(settings)
