"""9. What the Prometheus metrics cost: `me` at 32 connections on the app as it runs, next to
the same app with every metric a no-op (bench/metrics_off_app.py), both started for this
row, in alternating rounds of the same run; the best round of each is compared (the
machines are shared and noisy)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from bench.http_overhead import ME
from bench.stack import Stack
from bench.wrk import Load, alternating, best
from gemini_graphql.testing.processes import start_api

ROUNDS = 4
SECONDS = 4


@dataclass(frozen=True)
class MetricsCost:
    on: Load  # the best round with metrics, as served
    off: Load  # the best round with no-op metrics

    @property
    def ratio(self) -> float:
        return self.on.rps / self.off.rps

    @property
    def overhead(self) -> float:
        return 1 - self.ratio


async def metrics_overhead(stack: Stack) -> MetricsCost:
    # Both started now, the same way: the stack's own api has served every earlier section
    # (its heap, caches and label sets grown), which a fresh process has not.
    (on, on_url), (off, off_url) = await asyncio.gather(
        start_api(stack.settings),
        start_api(stack.settings, module="bench.metrics_off_app", args=()),
    )
    body = {"query": ME}
    try:
        loads = await alternating(
            {
                "on": (on_url + "/graphql", body, stack.token),
                "off": (off_url + "/graphql", body, stack.token),
            },
            rounds=ROUNDS,
            seconds=SECONDS,
        )
    finally:
        await asyncio.gather(on.stop(), off.stop())
    return MetricsCost(best(loads["on"]), best(loads["off"]))


def metrics_rows(cost: MetricsCost) -> list[tuple[str, str, str, str]]:
    ok = cost.overhead <= 0.05
    return [
        (
            "9. `me`, 32 connections, with the Prometheus metrics (best of "
            f"{ROUNDS} alternating rounds)",
            f"{cost.on.rps:,.0f} req/s, p50 {cost.on.p50_ms:.1f} ms",
            f"the same app with no-op metrics {cost.off.rps:,.0f} req/s: ratio "
            f"**{cost.ratio:.3f}** (overhead {cost.overhead:+.1%})",
            f"overhead ≤ 5% {'✅' if ok else '❌'}",
        )
    ]
