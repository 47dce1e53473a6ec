"""GraphiQL's page loads nothing from outside: every file it names is served by the app, with
the page's integrity value, the right content type and immutable caching; its example tabs
come in the page as data; production serves neither the page nor the files."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import replace
from fnmatch import fnmatch
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples import build_collection as examples
from gemini_graphql.api.transport import graphiql
from gemini_graphql.app.http_app import create_app
from gemini_graphql.config import AppEnv, Settings
from gemini_graphql.web.security_headers import PAGE_CSP

ROOT = Path(__file__).resolve().parents[1]
PAGE = {"Accept": "text/html"}
TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
# The one absolute URL the page holds: the SVG namespace inside its data: favicon.
SVG_NAMESPACE = "http://www.w3.org/2000/svg"


class _Loads(HTMLParser):
    """What the page makes the browser fetch: (tag, url, attributes) for every script with a
    src and every link that is not a data: URL."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[tuple[str, str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        url = found.get("src") if tag == "script" else found.get("href") if tag == "link" else None
        if url is not None and not url.startswith("data:"):
            self.loads.append((tag, url, found))


def loads_of(page: str) -> list[tuple[str, str, dict[str, str | None]]]:
    parser = _Loads()
    parser.feed(page)
    return parser.loads


async def test_every_file_the_page_loads_is_ours_and_matches_its_integrity(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/graphql", headers=PAGE)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    loads = loads_of(page.text)
    assert [url for _, url, _ in loads] == [
        f"/graphiql/assets/{asset.name}"
        for asset in sorted(graphiql.ASSETS, key=lambda asset: page.text.index(asset.name))
    ]
    assert len(loads) == len(graphiql.ASSETS) == 7
    for tag, url, attributes in loads:
        assert attributes.get("integrity", "").startswith("sha384-"), (tag, url)
        assert "crossorigin" in attributes, url  # integrity checks need a CORS-mode fetch
        if tag == "link":
            assert attributes.get("rel") == "stylesheet"
        response = await client.get(url)
        assert response.status_code == 200, url
        assert response.headers["content-type"] == TYPES[url[url.rindex(".") :]], url
        assert graphiql.sha384_integrity(response.content) == attributes["integrity"], url
        assert response.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert response.headers["x-content-type-options"] == "nosniff"
        # A browser holding the file asks with its ETag and is told it still has it.
        again = await client.get(url, headers={"If-None-Match": response.headers["etag"]})
        assert again.status_code == 304 and again.content == b"", url


async def test_the_page_names_nothing_outside(client: httpx.AsyncClient) -> None:
    page = (await client.get("/graphql", headers=PAGE)).text
    assert "unpkg" not in page and "{{" not in page
    assert set(re.findall(r"(?:https?:)?//[\w.-]+[^\s\"'%<>)]*", page)) == {SVG_NAMESPACE}
    assert all(url.startswith("/graphiql/assets/") for _, url, _ in loads_of(page))


async def test_the_vendored_files_are_the_ones_strawberrys_template_pinned() -> None:
    """Each file is what unpkg serves at the template's URL (its sha384 is the template's
    integrity value); what is on disk is what the page says, before any request."""
    for asset in graphiql.ASSETS:
        body = (graphiql.ASSET_DIR / asset.name).read_bytes()
        assert graphiql.sha384_integrity(body) == asset.integrity, asset.name
        assert asset.source.startswith("https://unpkg.com/") and "@" in asset.source
    template = (graphiql.ASSET_DIR / "graphiql.html").read_text(encoding="utf-8")
    for asset in graphiql.ASSETS:
        assert f'{graphiql.PLACEHOLDER}/{asset.name}"\n      integrity="{asset.integrity}"' in (
            template
        ), asset.name


async def test_a_file_that_does_not_match_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    tampered = replace(graphiql.ASSETS[0], integrity="sha384-" + "A" * 64)
    monkeypatch.setattr(graphiql, "ASSETS", (tampered,))
    with pytest.raises(RuntimeError, match="is not the file GraphiQL expects"):
        graphiql._loaded.__wrapped__()


@pytest.mark.parametrize(
    "path",
    [
        "/graphiql/assets/no-such-file.js",
        "/graphiql/assets/graphiql.html",  # the template is not a file the page loads
        "/graphiql/assets/licenses",
        "/graphiql/assets/..%2Fgraphiql.py",
        "/graphiql/assets/../graphiql.py",
        "/graphiql/assets/",
        "/graphiql/assets",
    ],
)
async def test_nothing_else_is_served_from_there(client: httpx.AsyncClient, path: str) -> None:
    assert (await client.get(path)).status_code == 404


async def test_production_serves_neither_the_page_nor_its_files(make_client: Any) -> None:
    production = await make_client(
        app_env=AppEnv.PRODUCTION, sms_backend="webhook", sms_webhook_url="http://127.0.0.1:1/"
    )
    assert (await production.get("/graphql", headers=PAGE)).status_code == 404
    for asset in graphiql.ASSETS:
        assert (await production.get(f"/graphiql/assets/{asset.name}")).status_code == 404


async def test_the_asset_urls_follow_a_root_path() -> None:
    """Behind a proxy that mounts the app under a prefix, the page names the prefixed URLs."""
    transport = httpx.ASGITransport(app=create_app(Settings()), root_path="/api")
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        page = await client.get("/api/graphql", headers=PAGE)  # no lifespan: the page needs none
    assert page.status_code == 200
    assert {url for _, url, _ in loads_of(page.text)} == {
        f"/api/graphiql/assets/{asset.name}" for asset in graphiql.ASSETS
    }


class _DataBlocks(HTMLParser):
    """The text of every <script type="application/json"> of a page, by id."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks: dict[str, str] = {}
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "script" and found.get("type") == "application/json":
            self._open = found.get("id") or ""
            self.blocks[self._open] = ""

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self.blocks[self._open] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._open = None


async def test_the_page_carries_the_example_tabs_as_a_data_block(
    client: httpx.AsyncClient,
) -> None:
    """The tabs GraphiQL opens with are the packaged example_tabs.json, one per example
    operation, in a JSON block (data, not code: the page's CSP stays as it was)."""
    page = await client.get("/graphql", headers=PAGE)
    parser = _DataBlocks()
    parser.feed(page.text)
    tabs = json.loads(parser.blocks["example-tabs"])
    assert tabs == json.loads(graphiql.EXAMPLE_TABS.read_text(encoding="utf-8"))
    assert len(tabs) == len(examples.load_operations()) > 20
    assert all(set(tab) == {"query", "variables", "headers"} for tab in tabs)
    assert page.headers["content-security-policy"] == PAGE_CSP.decode()


def test_json_in_the_page_cannot_end_its_element() -> None:
    hostile = {"query": "</script><script>alert(1)</script><!-- & -->", "n": [1, "\\<"]}
    text = graphiql.script_json(hostile)
    assert not {"<", ">", "&"} & set(text)
    assert json.loads(text) == hostile


def test_every_file_the_page_reads_is_package_data() -> None:
    """A wheel carries what pyproject's package-data names: the template, the example tabs
    and every asset (the page reads nothing outside the package)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["gemini_graphql.api.transport"]
    package = graphiql.ASSET_DIR.parent
    read = [graphiql.ASSET_DIR / "graphiql.html", graphiql.EXAMPLE_TABS]
    read += [graphiql.ASSET_DIR / asset.name for asset in graphiql.ASSETS]
    for path in read:
        relative = path.relative_to(package).as_posix()
        assert any(fnmatch(relative, pattern) for pattern in patterns), relative
