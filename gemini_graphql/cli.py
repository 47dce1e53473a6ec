"""The `gemini-graphql` command: serve, worker, dev, migrate, export-schema."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
from pathlib import Path

from gemini_graphql.config import ConfigError, Settings
from gemini_graphql.infra.migrate import NotReady, migrate, require_schema
from gemini_graphql.logs import configure_logging

log = logging.getLogger(__name__)
NOT_READY = 1  # the exit status when a store is missing, unreachable or behind
# How long `serve` lets open requests finish once it stops listening (uvicorn's
# timeout_graceful_shutdown), after DRAIN_GRACE_SECONDS of serving on from SIGTERM: an
# orchestrator's grace period must be longer than both together (tests/test_deploy_manifests).
API_SHUTDOWN_SECONDS = 30
PROG = "gemini-graphql"
DEV_EXTRA = ("fakeredis", "lupa", "aiosqlite")  # the `dev` extra: embedded stores


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the api process under uvicorn")
    serve.add_argument("--host", default=None, help="default: $HOST or 127.0.0.1")
    serve.add_argument("--port", type=int, default=None, help="default: $PORT or 8000")
    serve.add_argument(
        "--workers",
        type=int,
        default=None,
        help="api processes on the port (default: $WEB_CONCURRENCY or 1)",
    )

    dev = commands.add_parser(
        "dev", help="everything in one process: embedded stores, worker, offline model"
    )
    dev.add_argument("--host", default=None, help="default: $HOST or 127.0.0.1")
    dev.add_argument("--port", type=int, default=None, help="default: $PORT or 8000")

    worker = commands.add_parser("worker", help="run an arq worker that generates replies")
    worker.add_argument(
        "--check",
        action="store_true",
        help="exit 0 if a worker on this host recorded its health in Redis lately, else 1 "
        "(a liveness probe; it starts no worker)",
    )
    commands.add_parser("migrate", help="apply database migrations (alembic upgrade head)")

    export = commands.add_parser("export-schema", help="write the GraphQL SDL")
    export.add_argument("--output", default="schema.graphql", help="'-' for stdout")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with a leading `gemini-graphql` dropped: the image's ENTRYPOINT is
    gemini-graphql, and platforms that hand a configured command line to the ENTRYPOINT as
    its arguments (Fly's processes and release_command, for one) would otherwise run
    `gemini-graphql gemini-graphql migrate`. Manifests then say the whole command wherever
    the platform keeps or replaces the ENTRYPOINT."""
    words = list(sys.argv[1:] if argv is None else argv)
    if words[:1] == [PROG]:
        words = words[1:]
    return build_parser().parse_args(words)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "dev" and os.environ.get("APP_ENV", "").strip().lower() == "production":
        # Before the production checks, which would otherwise speak for a mode not asked for.
        print(
            "gemini-graphql dev: APP_ENV=production is set; dev mode runs without it "
            "(use `gemini-graphql serve` for production)",
            file=sys.stderr,
        )
        return 2
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"gemini-graphql: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings)
    try:
        return _run(args, settings)
    except NotReady as exc:
        # One line saying what to do; the traceback behind it only with DEBUG=true.
        log.debug("%s: not ready", args.command, exc_info=exc.__cause__ or exc)
        print(f"gemini-graphql {args.command}: {exc}", file=sys.stderr, flush=True)
        return NOT_READY


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "serve":
        # Before uvicorn starts (and forks its workers): an api on a database that is missing
        # or not migrated would report itself healthy and fail every request.
        require_schema(settings.database_url)
        return _serve(settings, args.host, args.port, args.workers or settings.web_concurrency)
    if args.command == "worker" and args.check:
        return asyncio.run(_check_worker(settings))
    if args.command == "worker":
        require_schema(settings.database_url)
        return _worker(settings)
    if args.command == "migrate":
        migrate(settings.database_url)
        return 0
    if args.command == "dev":
        try:
            from gemini_graphql.app.dev import run_dev
        except ModuleNotFoundError as exc:
            if not (exc.name or "").startswith(DEV_EXTRA):
                raise
            print(
                "gemini-graphql dev: dev mode needs the dev extra (embedded SQLite and Redis): "
                "pip install -e '.[dev]' (make dev installs it)",
                file=sys.stderr,
            )
            return 2
        return run_dev(settings, args.host, args.port)
    if args.command == "export-schema":
        return _export_schema(args.output)
    return 2  # pragma: no cover - argparse enforces the choices


def _serve(settings: Settings, host: str | None, port: int | None, workers: int) -> int:
    _expose_metrics(settings, processes=workers)

    from gemini_graphql.web import server

    # SIGTERM: not ready but serving for DRAIN_GRACE_SECONDS, then uvicorn's shutdown (see
    # server.DrainingServer); a second SIGTERM or Ctrl-C skips the wait.
    return server.run(
        server.ServeConfig(
            "gemini_graphql.app.asgi:app",
            drain_grace_seconds=settings.drain_grace_seconds,
            host=host or settings.host,
            port=port or settings.port,
            workers=workers,
            proxy_headers=True,
            log_level="debug" if settings.debug else "info",
            timeout_graceful_shutdown=API_SHUTDOWN_SECONDS,
            **server.uvicorn_options(settings),
        )
    )


def _worker(settings: Settings) -> int:
    import uvloop

    from gemini_graphql.app.worker import build_worker
    from gemini_graphql.infra.tracing import WORKER_SERVICE, from_env

    # uvloop, as the api runs under uvicorn: a reply's socket writes (Redis, PostgreSQL,
    # Gemini) cost a fifth of the worker's CPU on asyncio's own loop.
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    _expose_metrics(settings, processes=1)
    tracing = from_env(service=WORKER_SERVICE)  # None unless OTEL_* asks for traces
    # arq handles SIGINT/SIGTERM: the job in flight finishes.
    build_worker(settings, tracing=tracing).run()
    return 0


def _expose_metrics(settings: Settings, *, processes: int) -> None:
    """Multiprocess metrics for more than one api process (each writes its values to files
    in PROMETHEUS_MULTIPROC_DIR, a fresh directory unless one is given, emptied of an earlier
    run's files), and METRICS_PORT's server in this process, which sums them for a scrape."""
    from gemini_graphql.metrics import MULTIPROC_DIR_ENV, empty_multiprocess_dir

    if processes > 1 and not os.environ.get(MULTIPROC_DIR_ENV):
        os.environ[MULTIPROC_DIR_ENV] = tempfile.mkdtemp(prefix="gemini-graphql-metrics-")
    empty_multiprocess_dir()
    if settings.metrics_port:
        from prometheus_client import start_http_server

        from gemini_graphql.metrics import registry

        # On the api's interface (HOST: 0.0.0.0 in containers, else only this machine).
        start_http_server(settings.metrics_port, addr=settings.host, registry=registry())
        log.info("metrics on %s:%d (/metrics)", settings.host, settings.metrics_port)


async def _check_worker(settings: Settings) -> int:
    """0 when this host's worker wrote its health key within its interval (arq's
    check_health, on our Redis URL and key); 1 when it did not or Redis does not answer."""
    import redis.asyncio as aioredis

    from gemini_graphql.app.worker import worker_health_key

    client = aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=3, socket_timeout=3)
    try:
        health = await client.get(worker_health_key(settings.redis_names.arq_queue))
    except Exception as exc:  # unreachable, refused, timed out: not alive as far as we know
        print(f"gemini-graphql worker --check: Redis unavailable ({type(exc).__name__})")
        return 1
    finally:
        await client.aclose()
    if health is None:
        print("gemini-graphql worker --check: no worker on this host recorded its health lately")
        return 1
    print(f"gemini-graphql worker --check: alive ({health.decode(errors='replace')})")
    return 0


def _export_schema(output: str) -> int:
    from gemini_graphql.api.schema import build_schema

    sdl = build_schema().as_str() + "\n"
    if output == "-":
        sys.stdout.write(sdl)
    else:
        Path(output).write_text(sdl)
    return 0
