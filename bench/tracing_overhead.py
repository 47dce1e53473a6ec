"""Tracing's cost: `me` at 32 connections served by the real entry point
(`gemini_graphql.app.asgi`) with no OTEL_* variable (tracing off) against the same app
built without the tracing code path at all (bench/untraced_app.py), in alternating rounds
of the same run: the ratio should be 1.00 within noise. Then, for information, the same
entry point with tracing on, exporting over OTLP/HTTP to a fake collector (its own process,
on the same CPUs) that decodes nothing.

`python -m bench.tracing_overhead` runs it on a stack of its own and prints the rows.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bench.http_overhead import ME
from bench.stack import Stack, running_stack, uvicorn_process
from bench.wrk import Load, run_wrk
from gemini_graphql.testing.processes import settings_env

SECONDS = 5
ROUNDS = 4  # rounds of each of the two "off" apps, alternating (which goes first too)
CONNECTIONS = 32


def _env(stack: Stack, **otel: str) -> dict[str, str]:
    """The stack's settings, every OTEL_* variable of this shell blanked, then `otel`."""
    blank = {name: "" for name in os.environ if name.startswith("OTEL_")}
    return {**settings_env(stack.settings), **blank, **otel}


@asynccontextmanager
async def _api(module: str, env: dict[str, str]) -> AsyncIterator[str]:
    async with uvicorn_process(f"{module}:app", "/health/live", env, quiet=True) as url:
        yield url + "/graphql"


async def _me(url: str, stack: Stack) -> Load:
    return await run_wrk(
        url, connections=CONNECTIONS, seconds=SECONDS, body={"query": ME}, token=stack.token
    )


async def tracing_overhead(stack: Stack) -> list[tuple[str, str, str, str]]:
    """Rows (measure, value, baseline/ratio, target) as bench.run prints them; ~75 s."""
    off: list[Load] = []
    untraced: list[Load] = []
    async with (
        _api("gemini_graphql.app.asgi", _env(stack)) as off_url,
        _api("bench.untraced_app", _env(stack)) as untraced_url,
    ):
        await _me(off_url, stack)  # warm both up (caches, connection pools)
        await _me(untraced_url, stack)
        for round_ in range(ROUNDS):
            if round_ % 2:
                off.append(await _me(off_url, stack))
                untraced.append(await _me(untraced_url, stack))
            else:
                untraced.append(await _me(untraced_url, stack))
                off.append(await _me(off_url, stack))
    async with (
        uvicorn_process(
            "gemini_graphql.testing.fakes.otlp:app", "/v1/traces", quiet=True
        ) as collector,
        _api(
            "gemini_graphql.app.asgi",
            _env(stack, OTEL_EXPORTER_OTLP_ENDPOINT=collector),
        ) as on_url,
    ):
        await _me(on_url, stack)
        on = await _me(on_url, stack)
    off_rps = statistics.median(load.rps for load in off)
    base_rps = statistics.median(load.rps for load in untraced)
    off_p50 = statistics.median(load.p50_ms for load in off)
    base_p50 = statistics.median(load.p50_ms for load in untraced)
    ratio = off_rps / base_rps
    rounds = ", ".join(f"{a.rps:,.0f}/{b.rps:,.0f}" for a, b in zip(off, untraced, strict=True))
    errors = sum(load.errors for load in (*off, *untraced, on))
    return [
        (
            f"tracing: `me`, off (no OTEL_* variable), {CONNECTIONS} connections, "
            f"median of {ROUNDS} alternating rounds",
            f"{off_rps:,.0f} req/s, p50 {off_p50:.1f} ms (rounds off/untraced: {rounds}); "
            f"errors {errors}",
            f"the app built without the tracing code path {base_rps:,.0f} req/s "
            f"(p50 {base_p50:.1f} ms): ratio **{ratio:.3f}**",
            f"≈ 1.00 (≥ 0.97) {'✅' if ratio >= 0.97 else '❌'}",
        ),
        (
            f"tracing: `me`, on (OTLP/HTTP to a fake collector), {CONNECTIONS} connections",
            f"{on.rps:,.0f} req/s, p50 {on.p50_ms:.1f} ms, p99 {on.p99_ms:.1f} ms",
            f"tracing off {off_rps:,.0f} req/s: ratio **{on.rps / off_rps:.3f}**",
            "(for information)",
        ),
    ]


async def main() -> None:
    async with running_stack(worker=False) as stack:
        for row in await tracing_overhead(stack):
            print(" | ".join(row))


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
