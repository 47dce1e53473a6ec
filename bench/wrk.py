"""Runs wrk (a compiled HTTP load generator, in its own process) and reads its report."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass


@dataclass(frozen=True)
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int = 0  # served in all


def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:  # Debian's package; installed on first use
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, capture_output=True)
        if shutil.which("wrk") is None:
            subprocess.run(["apt-get", "update", "-q"], check=False, capture_output=True)
            subprocess.run(
                ["apt-get", "install", "-y", "-q", "wrk"], check=True, capture_output=True
            )
        path = shutil.which("wrk")
    assert path, "wrk is needed for the HTTP benchmarks"
    return path


async def run_wrk(
    url: str, *, connections: int, seconds: int, body: dict | None = None, token: str | None = None
) -> Load:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    script = "wrk.method = {method}\nwrk.body = {body}\nwrk.headers = {{{headers}}}\n".format(
        method=json.dumps("POST" if body is not None else "GET"),
        body=json.dumps(json.dumps(body) if body is not None else ""),
        headers=", ".join(f"[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()),
    )
    return await _run_script(script, url, threads=1, connections=connections, seconds=seconds)


Target = tuple[str, dict | None, str | None]  # url, JSON body, bearer token


async def alternating(
    targets: dict[str, Target], *, rounds: int, seconds: int, connections: int = 32
) -> dict[str, list[Load]]:
    """Each target's loads over `rounds` rounds, after a 1 s warm-up of each (caches, pools):
    the targets one after the other, in reverse order every other round (which goes first
    matters on a noisy host)."""
    for url, body, token in targets.values():
        await run_wrk(url, connections=connections, seconds=1, body=body, token=token)
    loads: dict[str, list[Load]] = {name: [] for name in targets}
    for index in range(rounds):
        names = list(targets) if index % 2 == 0 else list(targets)[::-1]
        for name in names:
            url, body, token = targets[name]
            loads[name].append(
                await run_wrk(url, connections=connections, seconds=seconds, body=body, token=token)
            )
    return loads


def best(loads: list[Load]) -> Load:
    return max(loads, key=lambda load: load.rps)


async def _run_script(
    script: str, url: str, *, threads: int, connections: int, seconds: int
) -> Load:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as file:
        file.write(script)
    process = await asyncio.create_subprocess_exec(
        ensure_wrk(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        file.name,
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = (await process.communicate())[0].decode()
    return _parse(output)


def _parse(output: str) -> Load:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return Load(
        rps=rps,
        p50_ms=_latency(output, "50%"),
        p99_ms=_latency(output, "99%"),
        errors=errors + (int(non_2xx.group(1)) if non_2xx else 0),
        requests=int(served.group(1)) if (served := re.search(r"(\d+) requests in", output)) else 0,
    )


def _latency(output: str, label: str) -> float:
    value, unit = re.search(rf"{label}\s+([\d.]+)(us|ms|s)", output).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


async def run_wrk_users(url: str, *, tokens: list[str], bodies: list[dict], seconds: int) -> Load:
    """One connection (and one wrk thread) per user: connection i sends bodies[i] with
    tokens[i], as len(tokens) clients of different users do."""
    lua_list = lambda values: "{" + ", ".join(json.dumps(v) for v in values) + "}"  # noqa: E731
    script = f"""
local tokens = {lua_list(tokens)}
local bodies = {lua_list([json.dumps(body) for body in bodies])}
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("index", counter)
end
function init(args)
  req = wrk.format("POST", nil, {{
    ["Content-Type"] = "application/json",
    ["Accept"] = "application/json",
    ["Authorization"] = "Bearer " .. tokens[index],
  }}, bodies[index])
end
function request()
  return req
end
"""
    return await _run_script(
        script, url, threads=len(tokens), connections=len(tokens), seconds=seconds
    )
