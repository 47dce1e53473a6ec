"""The ASGI application: routes, middleware, and the lifespan that owns connections."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from gemini_graphql.api.schema import Extension, build_schema
from gemini_graphql.api.transport.documents import Documents
from gemini_graphql.api.transport.extensions import SchemaHooks
from gemini_graphql.api.transport.graphiql import graphiql, graphiql_routes
from gemini_graphql.api.transport.http import GraphQLOverHTTP
from gemini_graphql.api.transport.operation_metrics import OperationMetrics
from gemini_graphql.api.transport.strawberry_seams import graphql_schema
from gemini_graphql.api.transport.websocket import GraphQLWebSocket
from gemini_graphql.auth.sms import SmsSender
from gemini_graphql.clock import Clock, utc_now
from gemini_graphql.config import Settings
from gemini_graphql.infra.leases import Leases
from gemini_graphql.infra.migrate import SchemaWatch
from gemini_graphql.infra.relay import LagProbe
from gemini_graphql.infra.resources import Resources
from gemini_graphql.metrics import process_exited
from gemini_graphql.services import Services
from gemini_graphql.web.cors import cors_middleware
from gemini_graphql.web.metrics import metrics_endpoint
from gemini_graphql.web.middleware import (
    BodySizeLimitMiddleware,
    RequestIdMiddleware,
    Shortcut,
)
from gemini_graphql.web.routes import health, live, ready, root
from gemini_graphql.web.security_headers import SecurityHeadersMiddleware
from gemini_graphql.web.stripe_webhook import stripe_webhook

if TYPE_CHECKING:
    from gemini_graphql.infra.otel import Tracing


def create_app(
    settings: Settings,
    *,
    clock: Clock = utc_now,
    sms: SmsSender | None = None,
    extensions: Sequence[Extension] = (),
    tracing: Tracing | None = None,
) -> Starlette:
    """`clock` and `sms` are injectable for tests; production uses the defaults.
    `extensions`: Strawberry SchemaExtensions (tracing, masking...) run on every operation.
    `tracing` (infra.tracing.from_env, None when off): spans for requests and operations,
    and the trace context carried into reply jobs; None adds nothing anywhere."""
    traced: list[Middleware] = []
    if tracing is not None:
        from gemini_graphql.api.transport.tracing import extensions as tracing_extensions
        from gemini_graphql.infra.otel import HttpSpans

        extensions = [*tracing_extensions(tracing.provider), *extensions]
        traced.append(Middleware(HttpSpans, tracing=tracing))
    schema = build_schema(extensions)
    documents = Documents(graphql_schema(schema), introspection=not settings.is_production)
    hooks = SchemaHooks.of(schema, documents)
    # One cap on operation names for both transports (see operation_metrics).
    operation_metrics = OperationMetrics(documents)
    graphql = GraphQLOverHTTP(
        schema, documents, hooks, ide=graphiql(settings), metrics=operation_metrics
    )
    graphql_ws = GraphQLWebSocket(schema, documents, hooks, settings, metrics=operation_metrics)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        resources = Resources.open(settings, clock=clock)
        services = Services.build(resources, sms=sms, tracing=tracing)
        # Other processes' changes drop this process's copies of users (see user_cache).
        services.relay.watch(resources.users.channel, resources.users)
        lag_probe = LagProbe.of_process(resources.redis, settings.redis_names)
        lag_probe.start(services.relay)
        # /health says "migrations pending" when the database falls behind the code's head
        # (`serve` refuses to start on one; this catches a revision added while it runs).
        schema_watch = SchemaWatch.of_scripts()
        # Everything built so far lives as long as the process: keep it out of the garbage
        # collector's scans, whose full passes otherwise stall every request for tens of ms.
        gc.freeze()
        app.state.resources = resources
        app.state.services = services
        app.state.schema = schema_watch
        # Websockets one user holds open, counted across every api process.
        app.state.websocket_leases = Leases(
            resources.redis,
            settings.redis_names.key("websockets"),
            limit=settings.max_websockets_per_user,
        )
        try:
            yield
        finally:
            try:
                await lag_probe.close()
                await app.state.websocket_leases.close()
                await services.close()
            finally:
                process_exited()

    graphql_route = Route("/graphql", graphql, methods=["GET", "POST"], name="graphql")
    return Starlette(
        debug=False,  # never render tracebacks; errors are logged with a request id
        routes=[  # the busiest first: the router tries them in order
            graphql_route,
            Route("/", root, methods=["GET"], name="root"),
            Route("/health", health, methods=["GET"], name="health"),
            Route("/health/live", live, methods=["GET"], name="health_live"),
            Route("/health/ready", ready, methods=["GET"], name="health_ready"),
            Route("/webhook/stripe", stripe_webhook, methods=["POST"], name="stripe_webhook"),
            Route("/metrics", metrics_endpoint(settings), methods=["GET"], name="metrics"),
            *graphiql_routes(settings),  # GraphiQL's files, outside production
        ],
        middleware=[
            *traced,  # outermost: the request's span covers all the rest
            Middleware(RequestIdMiddleware, access_log=settings.access_log),
            # The GraphQL websocket skips what follows (CORS, body cap, router): see there.
            Middleware(Shortcut, path="/graphql", endpoint=graphql_ws),
            Middleware(SecurityHeadersMiddleware, force_https=settings.force_https),
            cors_middleware(settings),
            Middleware(
                BodySizeLimitMiddleware,
                max_bytes=settings.max_body_bytes,
                timeout_seconds=settings.http_body_timeout_seconds,
            ),
            # GraphQL over HTTP skips the router and its exception middleware: see there.
            Middleware(
                Shortcut,
                path="/graphql",
                endpoint=graphql,
                kind="http",
                methods=frozenset({"GET", "POST"}),
                route=graphql_route,
            ),
        ],
        lifespan=lifespan,
    )
