"""The baseline for our transports: the same app (lifespan, middleware, schema, resolvers,
context) with /graphql served over HTTP and graphql-transport-ws by Strawberry's stock
`strawberry.asgi.GraphQL` view instead of `api/transport/`. Run by uvicorn in its own
process with the settings in the environment, as `gemini-graphql serve` is."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL

from gemini_graphql.api.context import Context
from gemini_graphql.api.schema import build_schema
from gemini_graphql.app.http_app import create_app
from gemini_graphql.config import Settings
from gemini_graphql.web.middleware import Shortcut


class StockGraphQL(GraphQL):
    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> Context:  # type: ignore[override]
        return Context.of(request)


def stock_app(settings: Settings):  # type: ignore[no-untyped-def]
    app = create_app(settings)
    view = StockGraphQL(build_schema(), graphql_ide=None)
    # Our endpoints are middleware in front of the router (Shortcut): take them out.
    app.user_middleware = [entry for entry in app.user_middleware if entry.cls is not Shortcut]
    routes = [route for route in app.router.routes if getattr(route, "path", None) != "/graphql"]
    app.router.routes = [
        Route("/graphql", view, methods=["GET", "POST"]),
        WebSocketRoute("/graphql", view),
        *routes,
    ]
    return app


app = stock_app(Settings.from_env()) if __name__ != "__main__" else None


def main() -> None:
    """`python -m bench.strawberry_app PORT`: served as `gemini-graphql serve` serves ours."""
    import sys

    import uvicorn

    from gemini_graphql.web.server import uvicorn_options

    settings = Settings.from_env()
    uvicorn.run(
        "bench.strawberry_app:app",
        host="127.0.0.1",
        port=int(sys.argv[1]),
        proxy_headers=True,
        log_level="warning",
        **uvicorn_options(settings),
    )


if __name__ == "__main__":
    main()
