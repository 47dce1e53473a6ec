"""11. Fan-out capacity of one api process, against bare Starlette with the same pinning.

The api runs alone on CPU 0; everything that makes the load (this process's publisher, the
websocket client process, wrk, and a private redis-server) runs on CPU 1, so the figure is
the api's and not the load tools'. With 1,000 streams subscribed, the delivered rate is
stepped up by STEP from START_RATE, STEP_SECONDS a step, until a step's publish → client
p99 exceeds P99_MS (or an event is missing); the last passing step is the capacity. Each
step also gives the api's CPU per delivered event (/proc). The baseline: bare Starlette
(bench/raw_app.py, one process on CPU 0) under wrk on CPU 1, 32 connections: its req/s and
its CPU per request, measured before and after the steps, the better of the two each.
CPU 1's busy share is printed for each step: when it nears 100% the load tools, not the
api, set the limit.

Then: one stream followed by 3 subscribers (three devices, three sockets) against the same
streams with 1 subscriber, at the same published rate: the api's CPU per published event,
next to what the kernel alone takes for each extra socket's write (bench/socket_floor.py).

    python -m bench.capacity
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx

from bench.cpu import PidMeter, process_tree
from bench.machine import pin, pinned_self
from bench.stack import Stack, percentile, running_stack
from bench.streams import Client, Publisher, make_pending_replies
from bench.wrk import Load, run_wrk
from gemini_graphql.chat.reply_stream import StreamEvent
from gemini_graphql.models import MessageStatus
from gemini_graphql.testing.processes import free_port
from tests.servers import RedisServer

API_CPUS, LOAD_CPUS = {0}, {1}
STREAMS = 1000
START_RATE = 2000.0  # delivered events per second
STEP = 1.25
MAX_STEPS = 16  # 2,000 × 1.25^15 ≈ 57,000 events/s: past what one process and one load CPU do
STEP_SECONDS = 3.0
TICK = 0.005  # the publisher's pace: what is due is published every TICK
P99_MS = 50.0
DEVICES_STREAMS = 300  # streams of the 3-vs-1 subscriber rows
DEVICES_RATE = 2000.0  # published events per second there
RAW_SECONDS = 5


@dataclass
class Step:
    rate: float  # targeted delivered events per second
    expected: int
    latencies: list[float]
    api_seconds: float
    cpu_busy: list[float]  # per CPU, over the step
    elapsed: float

    @property
    def delivered(self) -> int:
        return len(self.latencies)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 0.99) if self.latencies else float("inf")

    @property
    def passed(self) -> bool:
        return self.delivered >= self.expected and self.p99 <= P99_MS

    @property
    def achieved(self) -> float:
        return self.delivered / self.elapsed

    def api_us_per_event(self) -> float:
        return self.api_seconds / max(1, self.delivered) * 1e6

    def describe(self) -> str:
        return (
            f"{self.rate:,.0f}/s: p99 {self.p99:.1f} ms, {self.delivered:,}/{self.expected:,}, "
            f"CPU0 {self.cpu_busy[0]:.0%} CPU1 {self.cpu_busy[1]:.0%}"
        )


@dataclass
class Capacity:
    steps: list[Step]
    raw: Load
    raw_us_per_request: float
    one_device_us: float
    three_devices_us: float
    devices_delivered: tuple[int, int] = (0, 0)
    notes: list[str] = field(default_factory=list)
    write_us: float = 0.0  # bench/socket_floor.py: one write to an idle reader's socket

    @property
    def last_pass(self) -> Step | None:
        passing = [step for step in self.steps if step.passed]
        if not passing or not self.steps[0].passed:
            return None
        for step in self.steps:  # the last of the first unbroken run of passing steps
            if not step.passed:
                break
            last = step
        return last


class Rotation:
    """Streams taking turns: a pass over all of them gives each its next seq, and a step
    goes on where the last one stopped, so every stream's seqs follow on without a gap."""

    def __init__(self, ids: list[uuid.UUID]) -> None:
        self.ids, self.cursor, self.seq = ids, 0, 1

    def take(self, count: int) -> tuple[list[uuid.UUID], int]:
        """Up to `count` streams that share a seq (not past the end of a pass), and it."""
        chunk = self.ids[self.cursor : self.cursor + count]
        seq = self.seq
        self.cursor += len(chunk)
        if self.cursor == len(self.ids):
            self.cursor, self.seq = 0, self.seq + 1
        return chunk, seq


async def _publish_at(publisher: Publisher, rotation: Rotation, rate: float, seconds: float) -> int:
    """`rate` events a second for `seconds`, published every TICK; returns how many."""
    total, published = int(rate * seconds), 0
    started = time.monotonic()
    while published < total:
        due = min(total, int(rate * (time.monotonic() - started)) + 1)
        while published < due:
            chunk, seq = rotation.take(due - published)
            await publisher.publish(
                chunk, StreamEvent(seq, f"{time.monotonic():.6f}", MessageStatus.STREAMING)
            )
            published += len(chunk)
        await asyncio.sleep(TICK)
    return total


async def _step(
    stack: Stack,
    publisher: Publisher,
    client: Client,
    rotation: Rotation,
    rate: float,
    copies: int = 1,
) -> Step:
    await client.ask({"op": "record"})
    meter = PidMeter({"api": process_tree(stack.api.pid)})
    started = time.monotonic()
    published = await _publish_at(publisher, rotation, rate / copies, STEP_SECONDS)
    report = await client.ask({"op": "collect", "expect": published * copies, "timeout": 10})
    use = meter.stop()
    return Step(
        rate=rate,
        expected=published * copies,
        latencies=report["latencies_ms"],
        api_seconds=use.per_role_seconds["api"],
        cpu_busy=meter.cpu_busy,
        elapsed=time.monotonic() - started,
    )


@asynccontextmanager
async def _pinned_raw_app() -> AsyncIterator[tuple[str, int]]:
    """bench/raw_app.py under `serve`'s uvicorn flags, one process on API_CPUS."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bench.raw_app:app", "--port", str(port)]
        + ["--no-access-log", "--log-level", "warning"],
        preexec_fn=lambda: os.sched_setaffinity(0, API_CPUS),  # noqa: PLW1509
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as client, asyncio.timeout(30):
            while True:
                try:
                    await client.get(url + "/raw")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
        yield url, process.pid
    finally:
        process.terminate()
        process.wait()


async def _raw_baseline() -> tuple[Load, float]:
    async with _pinned_raw_app() as (url, pid):
        await run_wrk(url + "/raw", connections=32, seconds=1, body={"query": "{ me { id } }"})
        meter = PidMeter({"raw": [pid]})
        load = await run_wrk(
            url + "/raw", connections=32, seconds=RAW_SECONDS, body={"query": "{ me { id } }"}
        )
        seconds = meter.stop().per_role_seconds["raw"]
    return load, seconds / max(1, load.requests) * 1e6


async def fan_out_capacity() -> Capacity:
    if len(os.sched_getaffinity(0)) < 2:
        raise RuntimeError("the capacity rows pin the api and the load to two different CPUs")
    redis_server = RedisServer()
    with pinned_self(LOAD_CPUS):  # redis-server, the client and wrk start here: they inherit
        await redis_server.start()
        try:
            before = await _raw_baseline()
            async with running_stack(worker=False, redis_url=redis_server.url) as stack:
                pin(stack.api.pid, API_CPUS)
                capacity = await _measure(stack, *before)
            # Bare Starlette again after, and the better of the two for each baseline: a
            # neighbour's burst during one of them must not flatter the ratios.
            after = await _raw_baseline()
            capacity.raw = max(before[0], after[0], key=lambda load: load.rps)
            capacity.raw_us_per_request = min(before[1], after[1])
            return capacity
        finally:
            await redis_server.stop(keep_data=False)


async def _measure(stack: Stack, raw: Load, raw_us: float) -> Capacity:
    replies = await make_pending_replies(stack, STREAMS + 2 * DEVICES_STREAMS)
    ids = [uuid.UUID(reply) for reply in replies]
    streams, one, three = (
        ids[:STREAMS],
        ids[STREAMS : STREAMS + DEVICES_STREAMS],
        ids[STREAMS + DEVICES_STREAMS :],
    )
    client = await Client.start(stack)
    publisher = await Publisher.open(stack.settings.redis_url, stack.settings.redis_names)
    try:
        await client.ask({"op": "subscribe", "ids": [str(i) for i in streams]})
        await asyncio.sleep(1)
        steps: list[Step] = []
        rate = START_RATE
        rotation = Rotation(streams)
        await _step(stack, publisher, client, rotation, rate / 2)  # warm up
        for _ in range(MAX_STEPS):
            step = await _step(stack, publisher, client, rotation, rate)
            steps.append(step)
            print(f"[bench] fan-out {step.describe()}", flush=True)
            if not step.passed:
                break
            rate *= STEP
        await client.ask({"op": "close_all"})
        await asyncio.sleep(1)
        devices = {}
        for copies, measured in ((1, one), (3, three)):
            await client.ask({"op": "subscribe", "ids": [str(i) for i in measured] * copies})
            await asyncio.sleep(1)
            # The first events of fresh streams; then the measured step, on the same ones.
            turns = Rotation(measured)
            await _step(stack, publisher, client, turns, DEVICES_RATE * copies / 2, copies)
            devices[copies] = await _step(
                stack, publisher, client, turns, DEVICES_RATE * copies, copies
            )
            await client.ask({"op": "close_all"})
            await asyncio.sleep(1)
    finally:
        await client.close()
        await publisher.close()
    # Per published event: the api's CPU over the step / events published (each reaching
    # `copies` sockets).
    one_us = devices[1].api_seconds / devices[1].expected * 1e6
    three_us = devices[3].api_seconds / (devices[3].expected / 3) * 1e6
    floor = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bench.socket_floor"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Capacity(
        steps,
        raw,
        raw_us,
        one_us,
        three_us,
        (devices[1].delivered, devices[3].delivered),
        write_us=float(floor.stdout),
    )


def capacity_rows(result: Capacity) -> list[tuple[str, str, str, str]]:
    raw = result.raw
    last = result.last_pass
    steps = "; ".join(step.describe() for step in result.steps)
    rows = []
    if last is None:
        rows.append(
            (
                f"11. fan-out capacity: one api process (CPU 0), {STREAMS:,} streams, "
                f"publish → client p99 ≤ {P99_MS:.0f} ms, rate ×{STEP} per {STEP_SECONDS:.0f} s step",
                f"not even {result.steps[0].rate:,.0f} events/s passed ({steps})",
                f"bare Starlette {raw.rps:,.0f} req/s (CPU 0, wrk on CPU 1)",
                "≥ 1.5× ❌",
            )
        )
        return rows
    ratio = last.achieved / raw.rps
    unbroken = " (no step failed: at least this)" if last is result.steps[-1] else ""
    rows.append(
        (
            f"11. fan-out capacity: one api process (CPU 0; publisher, websocket client, "
            f"Redis on CPU 1), {STREAMS:,} streams, the highest delivered rate with publish → "
            f"client p99 ≤ {P99_MS:.0f} ms (×{STEP} per {STEP_SECONDS:.0f} s step)",
            f"**{last.achieved:,.0f} events/s**{unbroken} (p99 {last.p99:.1f} ms; steps: {steps})",
            f"bare Starlette {raw.rps:,.0f} req/s, p50 {raw.p50_ms:.1f} ms (CPU 0, wrk on "
            f"CPU 1, 32 connections): ratio **{ratio:.2f}×**",
            f"≥ 1.5× {'✅' if ratio >= 1.5 else '❌'}",
        )
    )
    cost = last.api_us_per_event()
    ratio = cost / result.raw_us_per_request
    rows.append(
        (
            f"11. api CPU per delivered event, at the last passing step ({last.rate:,.0f}/s)",
            f"{cost:.1f} µs",
            f"bare Starlette CPU per request {result.raw_us_per_request:.1f} µs: "
            f"ratio **{ratio:.2f}×**",
            f"≤ 0.5× {'✅' if ratio <= 0.5 else '❌'}",
        )
    )
    ratio = result.three_devices_us / result.one_device_us
    extra = (result.three_devices_us - result.one_device_us) / 2
    rows.append(
        (
            f"11. one stream followed by 3 subscribers (three devices) vs 1: api CPU per "
            f"published event, {DEVICES_STREAMS} streams at {DEVICES_RATE:,.0f} events/s",
            f"3 subscribers {result.three_devices_us:.1f} µs "
            f"({result.devices_delivered[1]:,} delivered): {extra:.1f} µs per extra device, "
            f"of which the kernel's write to its socket, measured alone, {result.write_us:.1f} "
            f"µs (a bare send to an idle reader on the other CPU, bench/socket_floor.py)",
            f"1 subscriber {result.one_device_us:.1f} µs "
            f"({result.devices_delivered[0]:,} delivered): ratio **{ratio:.2f}×**; with nothing "
            f"but those two writes it would be "
            f"{(result.one_device_us + 2 * result.write_us) / result.one_device_us:.2f}×",
            f"≤ 1.5× {'✅' if ratio <= 1.5 else '❌'}",
        )
    )
    return rows


async def main() -> None:
    for row in capacity_rows(await fan_out_capacity()):
        print(" | ".join(row))


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
