"""The GraphiQL page at /graphql for browsers, outside production (404 there).

Operations never come here: `api.http` and `api.websocket` serve them.
"""

from __future__ import annotations

from typing import Any

from strawberry.asgi import GraphQL

from gemini_graphql.config import Settings


def graphiql(schema: Any, settings: Settings) -> GraphQL:
    return GraphQL(schema, graphql_ide=None if settings.is_production else "graphiql")
