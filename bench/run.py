"""`make bench`: every benchmark in one run, printed as one table and written to RESULTS.md.

Each figure is measured next to its baseline in the same run and reported as a ratio too:
the machines are shared and noisy. Each row says what the machine did during its section
(its load average at the start, how busy it was, what other tenants took); rows that only
have an absolute figure say "host-dependent". Loads are bounded in time and count, on
127.0.0.1 only.

    python -m bench.run [--baseline REV | --baseline none] [--only SECTION ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import uvloop

from bench.baseline import DEFAULT_REV, baseline_rows, compare
from bench.branch_paging import branch_paging
from bench.capacity import capacity_rows, fan_out_capacity
from bench.first_word import time_to_first_word
from bench.hostile_documents import refusal_cpu
from bench.http_overhead import ROUNDS as HTTP_ROUNDS
from bench.http_overhead import graphql_overhead, send_message
from bench.machine import Section, loadavg, raise_open_files, section
from bench.metrics_overhead import metrics_overhead, metrics_rows
from bench.redis_memory import redis_memory_rows
from bench.stack import Stack, drop_database, percentile, running_stack
from bench.stock_strawberry import http_rows, idle_rows
from bench.stop_latency import CHUNK_SECONDS, stop_latency
from bench.streams import LARGEST, live_streams
from bench.throughput import drained, send_many_users, send_rows, two_workers, workers_rows
from bench.tracing_overhead import tracing_overhead

RESULTS = Path(__file__).with_name("RESULTS.md")
HOST = "(host-dependent: absolute)"
Row = tuple[str, str, str, str]


def ms(seconds: list[float], share: float) -> float:
    return percentile(seconds, share) * 1000


def refusal_rows() -> list[Row]:
    rows: list[Row] = []
    refusals = refusal_cpu()
    ordinary = refusals.pop("ordinary")
    for name, cpu in refusals.items():
        target = f"< 10 ms {'✅' if cpu < 10 else '❌'} {HOST}" if name == "chain 40" else "–"
        rows.append(
            (
                f"0. refusing a fragment {name.replace('chain', 'chain of')} (2^n fields expanded), uncached",
                f"{cpu:.2f} ms CPU",
                f"checking an ordinary `sendMessage` document: {ordinary:.2f} ms: ratio {cpu / ordinary:.2f}",
                target,
            )
        )
    return rows


async def http_section(stack: Stack, me_p50_ms: list[float]) -> list[Row]:
    """Row 1; `me`'s p50 is appended to `me_p50_ms` (row 2 compares with it)."""
    rows: list[Row] = []
    http = await graphql_overhead(stack)
    me_p50_ms.append(http["me"].p50_ms)
    raw = http["raw"]
    for name, label, target in (
        ("me", "(a) `me` query", 0.45),
        ("chatrooms", "(b) `chatrooms(first: 20)`, cached", 0.15),
    ):
        load = http[name]
        ratio = load.rps / raw.rps
        rows.append(
            (
                f"1. {label}, 32 connections, best of {HTTP_ROUNDS} alternating rounds",
                f"{load.rps:,.0f} req/s, p50 {load.p50_ms:.1f} ms, p99 {load.p99_ms:.1f} ms",
                f"raw Starlette {raw.rps:,.0f} req/s (p50 {raw.p50_ms:.1f} ms): ratio **{ratio:.3f}**",
                f"≥ {target} {'✅' if ratio >= target else '❌'}",
            )
        )
    return rows


async def first_word_section(stack: Stack) -> list[Row]:
    rows: list[Row] = []
    runs, sdk = await time_to_first_word(stack)
    sdk_p50 = statistics.median(sdk) * 1000
    labels = {
        "1": "1 conversation",
        "50 people": "50 conversations at once, 3–9 s between a reply and the next message",
        "50 hurried": "50 conversations at once, 0.5–1.5 s between a reply and the next message",
        "50 back to back": "50 conversations at once, back to back (saturated)",
    }
    for key, label in labels.items():
        run = runs[key]
        first, final = run.first, run.final
        added_p50, added_p99 = ms(first, 0.5) - sdk_p50, ms(first, 0.99) - ms(sdk, 0.99)
        target = "–"
        if key == "50 people":
            ok = added_p50 <= 25 and added_p99 <= 100
            target = f"added p50 ≤ 25 ms, p99 ≤ 100 ms {'✅' if ok else '❌'} {HOST}"
        rows.append(
            (
                f"3. first delta, {label}, {len(first)} messages",
                f"p50 {ms(first, 0.5):.1f} ms, p99 {ms(first, 0.99):.1f} ms; final event p50 {ms(final, 0.5):.1f} ms",
                f"google-genai first chunk p50 {sdk_p50:.1f} ms: added p50 **{added_p50:.1f} ms**, p99 **{added_p99:.1f} ms**",
                target,
            )
        )
    for key, run in runs.items():
        rows.append(
            (
                f"3. CPU per message, {key} (every process of that name on the machine)",
                run.cpu.per_message_ms(len(run.first)),
                f"{len(run.first) / run.seconds:.0f} messages/s; machine busy {run.cpu.busy_share:.0%} "
                f"of {os.cpu_count()} CPUs (other tenants took {run.cpu.steal_share:.0%})",
                f"(where the time goes) {HOST}; row 10 compares it with a baseline",
            )
        )
    return rows


async def send_section(stack: Stack, me_p50_ms: float | None) -> list[Row]:
    rows: list[Row] = []
    send = await send_message(stack)
    one, many, me_one = send["send_1"], send["send_32"], send["me_1"]
    me_32 = me_p50_ms if me_p50_ms is not None else float("nan")
    rows.append(
        (
            "2. `sendMessage`, 1 client",
            f"{one.rps:,.0f} req/s, p50 {one.p50_ms:.1f} ms, p99 {one.p99_ms:.1f} ms",
            f"(a) `me` p50 {me_32:.1f} ms (measure 1): ratio **{one.p50_ms / me_32:.2f}×**; "
            f"`me` at 1 client p50 {me_one.p50_ms:.2f} ms: {one.p50_ms / me_one.p50_ms:.0f}×",
            f"≤ 3× {'✅' if one.p50_ms <= 3 * me_32 else '❌'}",
        )
    )
    rows.append(
        (
            "2. `sendMessage`, 32 clients (one user, one room)",
            f"{many.rps:,.0f} req/s, p50 {many.p50_ms:.1f} ms, p99 {many.p99_ms:.1f} ms",
            f"errors {many.errors}",
            f"– {HOST}",
        )
    )
    waited = await drained(stack)  # the worker answers what was queued before row 12
    print(f"[bench] the worker caught up with the queued replies in {waited:.0f} s", flush=True)
    return rows


async def stock_section(stack: Stack) -> list[Row]:
    rows: list[Row] = []
    for name, (ours, stock) in (await http_rows(stack)).items():
        ratio = ours.rps / stock.rps
        rows.append(
            (
                f"5. `{name}` on our transport vs Strawberry's stock `GraphQL` view, 32 connections",
                f"ours {ours.rps:,.0f} req/s (p50 {ours.p50_ms:.1f} ms); stock {stock.rps:,.0f} req/s (p50 {stock.p50_ms:.1f} ms)",
                f"ratio ours/stock **{ratio:.2f}×**",
                f"> 1 {'✅' if ratio > 1 else '❌'} (else drop our transport)",
            )
        )
    return rows


async def idle_section(stack: Stack) -> list[Row]:
    ours_kb, stock_kb = await idle_rows(stack)
    return [
        (
            "5. RSS per idle subscription at 1,000, our transport vs Strawberry's stock view",
            f"ours {ours_kb:.1f} KB; stock {stock_kb:.1f} KB",
            f"ratio stock/ours **{stock_kb / ours_kb:.2f}×**" if ours_kb > 0 else "–",
            f"ours smaller {'✅' if ours_kb < stock_kb else '❌'}",
        )
    ]


async def streams_section(stack: Stack) -> list[Row]:
    rows: list[Row] = []
    streams = await live_streams(stack)
    for size, kb in streams["kb_per_subscription"].items():
        target = (
            f"≤ 20 KB {'✅' if kb <= 20 else '❌'}"
            if size == LARGEST
            else f"≤ 40 KB {'✅' if kb <= 40 else '❌'}"
        )
        rows.append(
            (
                f"4. {size:,} idle subscriptions held",
                f"{kb:.1f} KB RSS per subscription",
                f"(memory: absolute) process baseline {streams['baseline_kb'] / 1024:.0f} MB",
                target,
            )
        )
    latencies = streams["delta_latency_ms"]
    p99 = percentile(latencies, 0.99) if latencies else float("nan")
    rows.append(
        (
            "4. 10 deltas to each of 1,000 active streams (a delta per stream every 100 ms, streams not in step)",
            f"{len(latencies):,} delivered; p50 {percentile(latencies, 0.5):.1f} ms, p99 {p99:.1f} ms",
            "publish → client (row 11 measures capacity against a baseline)",
            f"p99 ≤ 50 ms {'✅' if p99 <= 50 else '❌'} {HOST}",
        )
    )
    burst = streams["in_step_latency_ms"]
    rows.append(
        (
            "4. the same, all 1,000 streams' deltas at the same instant",
            f"{len(burst):,} delivered; p50 {percentile(burst, 0.5):.1f} ms, p99 {percentile(burst, 0.99):.1f} ms",
            "publish → client",
            f"(worst case, for information) {HOST}",
        )
    )
    return rows


async def conversation_rows() -> list[tuple[str, str, str, str]]:
    """6. Branch paging and 7. stop latency, on a stack of their own."""
    rows: list[tuple[str, str, str, str]] = []
    async with running_stack(worker=False) as stack:  # stop_latency starts its own worker
        paging = await branch_paging(stack)
        checked = f"pages checked: {paging.wrong_pages} wrong; errors {paging.errors()}"
        for query, label in (
            ("last", "`messages(last: 20)`"),
            ("before", "`messages(last: 20, before: <first edge's cursor>)`"),
        ):
            ratio = paging.ratio(query)
            ok = ratio <= 1.5 and paging.wrong_pages == 0 and paging.errors() == 0
            rows.append(
                (
                    f"6. {label}, a room of 2,000 messages in 20 branches (current branch "
                    f"{paging.trunk:,} deep) vs a linear room of 2,000, 8 connections, "
                    f"{len(paging.loads['linear', query])} alternating rounds",
                    f"branched p50 {paging.p50('branched', query):.1f} ms, "
                    f"p99 {paging.p99('branched', query):.1f} ms, {paging.rps('branched', query):,.0f} req/s",
                    f"linear p50 {paging.p50('linear', query):.1f} ms, "
                    f"p99 {paging.p99('linear', query):.1f} ms, {paging.rps('linear', query):,.0f} req/s: "
                    f"ratio branched/linear **{ratio:.2f}×**; {checked}",
                    f"≤ 1.5× {'✅' if ok else '❌'}" if query == "last" else "–",
                )
            )
        stops = await stop_latency(stack)
        for problem in stops.problems:
            print("stopReply mismatch:", problem)
        after, sent = stops.after_response_ms, stops.after_request_ms
        p50 = percentile(after, 0.5)
        ok = p50 <= 100 and stops.mismatches == 0
        rows.append(
            (
                f"7. `stopReply` returning → final STOPPED event at the subscriber, "
                f"{len(stops.stop_ms)} replies streaming (fake Gemini, a chunk every {CHUNK_SECONDS * 1000:.0f} ms)",
                f"p50 {p50:.1f} ms, p99 {percentile(after, 0.99):.1f} ms "
                f"(max(0, ·): {stops.early} of {len(after)} finals arrived before the response)",
                f"`stopReply` itself p50 {percentile(stops.stop_ms, 0.5):.1f} ms, "
                f"p99 {percentile(stops.stop_ms, 0.99):.1f} ms; stop sent → final p50 "
                f"{percentile(sent, 0.5):.1f} ms, p99 {percentile(sent, 0.99):.1f} ms; "
                f"`me` p50 {percentile(stops.me_ms, 0.5):.1f} ms; mismatches **{stops.mismatches}**",
                f"p50 ≤ 100 ms, 0 mismatches {'✅' if ok else '❌'} {HOST}",
            )
        )
    return rows


async def _workers(stack: Stack) -> list[Row]:
    return workers_rows(await two_workers(stack))


async def _metrics(stack: Stack) -> list[Row]:
    return metrics_rows(await metrics_overhead(stack))


async def _send(stack: Stack, me_p50_ms: float | None) -> list[Row]:
    rows = await send_section(stack, me_p50_ms)
    return rows + send_rows(await send_many_users(stack))


async def measure(
    baseline: str | None, only: set[str] | None
) -> tuple[list[tuple[Row, Section]], list[Section]]:
    """Every section's rows, each with the section it was measured in."""
    rows: list[tuple[Row, Section]] = []
    sections: list[Section] = []

    def wanted(name: str) -> bool:
        return only is None or name in only

    async def run(name: str, make: Callable[[], Awaitable[list[Row]]]) -> None:
        if wanted(name):
            with section(name, sections) as current:
                made = await make()
            rows.extend((row, current) for row in made)

    async def refusals() -> list[Row]:
        return refusal_rows()

    await run("refusals", refusals)
    if any(wanted(name) for name in ("http", "first word", "workers", "stock", "metrics", "send")):
        async with running_stack() as stack:
            me_p50: list[float] = []

            await run("http", lambda: http_section(stack, me_p50))
            await run("first word", lambda: first_word_section(stack))
            await run("workers", lambda: _workers(stack))
            await run("stock", lambda: stock_section(stack))
            await run("metrics", lambda: _metrics(stack))
            await run("send", lambda: _send(stack, me_p50[0] if me_p50 else None))
    if wanted("idle"):
        async with running_stack(worker=False) as stack:
            await run("idle", lambda: idle_section(stack))
    if wanted("streams"):
        async with running_stack(worker=False) as stack:
            await run("streams", lambda: streams_section(stack))

    async def capacity() -> list[Row]:
        return capacity_rows(await fan_out_capacity())

    await run("capacity", capacity)
    if baseline is not None:

        async def per_message() -> list[Row]:
            return baseline_rows(await compare(baseline))

        await run("baseline", per_message)
    await run("conversation", conversation_rows)

    async def tracing() -> list[Row]:
        async with running_stack(worker=False) as stack:
            return await tracing_overhead(stack)

    await run("tracing", tracing)
    await run("redis memory", redis_memory_rows)
    return rows, sections


def render(
    rows: list[tuple[Row, Section]], sections: list[Section], started: str, seconds: float
) -> str:
    versions = ", ".join(
        f"{name} {version(name)}"
        for name in ("strawberry-graphql", "starlette", "uvicorn", "sqlalchemy", "redis", "arq")
    )
    timings = "; ".join(f"{current.name} {current.seconds:.0f} s" for current in sections)
    lines = [
        "# Benchmark results",
        "",
        f"Run on {started} UTC ({seconds / 60:.1f} minutes); load average at the start "
        f"{sections[0].load_at_start if sections else loadavg()}; {os.cpu_count()} CPUs; "
        f"Python {platform.python_version()}; {versions}.",
        "One uvicorn process (uvloop, httptools) for the api unless a row says otherwise, with",
        "production's ACCESS_LOG=errors (row 10 runs both trees as dev: each logs every request);",
        "wrk (1 thread) or a Python websocket process for the load; PostgreSQL, Redis, a worker",
        "and the fake Gemini on the same machine. The hosts are shared and of different speeds:",
        "compare the ratios to the same-run baselines; a figure marked host-dependent has none.",
        f"Sections: {timings}.",
        "",
        "| measure | value | baseline in the same run | target | machine during the section |",
        "|---|---|---|---|---|",
        *(f"| {' | '.join(row)} | {current.name}: {current.note()} |" for row, current in rows),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument(
        "--baseline",
        default=os.environ.get("BASELINE") or DEFAULT_REV,
        help=f"the revision row 10 compares with (default {DEFAULT_REV}); 'none' skips it",
    )
    parser.add_argument(
        "--only", nargs="*", help="sections to run (the table is printed, not written)"
    )
    args = parser.parse_args()
    baseline = None if args.baseline.lower() == "none" else args.baseline
    only = set(args.only) if args.only else None
    raise_open_files()
    started, clock = f"{datetime.now(UTC):%Y-%m-%d %H:%M}", time.perf_counter()
    # The load client's own CPU competes with the stack: uvloop, as the servers run.
    try:
        rows, sections = uvloop.run(measure(baseline, only))
    finally:
        uvloop.run(drop_database())
    table = render(rows, sections, started, time.perf_counter() - clock)
    print(table)
    if only is None:
        RESULTS.write_text(table)


if __name__ == "__main__":
    main()
