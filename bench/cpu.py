"""Where the CPU goes during a load: per process role, and the whole machine (Linux /proc).

Printed next to the time-to-first-word figures, because at 50 conversations on a small
machine those are queueing: the sum of every process's work per message decides them.
"""

from __future__ import annotations

import os
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
# A process's role, by what its command line holds (or its name, for the servers).
ROLES = (
    ("api", "gemini_graphql\0serve"),
    ("worker", "gemini_graphql\0worker"),
    ("fake Gemini", "bench.fake_gemini"),
    ("websocket client", "bench.stream_client"),
    ("PostgreSQL", "postgres"),
    ("Redis", "redis-server"),
)
CLIENT = "load client"


def _role(pid: int) -> str | None:
    if pid == os.getpid():
        return CLIENT
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None
    for role, pattern in ROLES:
        if pattern in cmdline or pattern == name:
            return role
    return None


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def _processes() -> dict[int, str]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (role := _role(int(entry))) is not None:
            found[int(entry)] = role
    return found


def _machine() -> tuple[float, float, float]:
    """Busy, stolen and total CPU seconds of the whole machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    steal = values[7] if len(values) > 7 else 0
    total = sum(values[:8])
    return (total - idle - steal) / TICKS, steal / TICKS, total / TICKS


@dataclass(frozen=True)
class CpuUse:
    per_role_seconds: dict[str, float]
    busy_share: float  # of all CPUs, over the interval
    steal_share: float  # taken by other tenants of a shared host

    def per_message_ms(self, messages: int) -> str:
        parts = [
            f"{role} {seconds / messages * 1000:.1f}"
            for role, seconds in sorted(self.per_role_seconds.items(), key=lambda item: -item[1])
        ]
        return ", ".join(parts) + " ms"


class CpuMeter:
    def __init__(self) -> None:
        self._processes = _processes()  # the servers are up; their connections are pooled
        self._start = self._sample()
        self._machine_start = _machine()

    def _sample(self) -> dict[int, float]:
        samples = {}
        for pid in self._processes:
            with suppress(OSError):  # ended (e.g. a PostgreSQL backend): its time is not counted
                samples[pid] = _cpu_seconds(pid)
        return samples

    def stop(self) -> CpuUse:
        self._processes = _processes() | self._processes  # e.g. PostgreSQL backends opened since
        end, machine = self._sample(), _machine()
        per_role: dict[str, float] = {}
        for pid, seconds in end.items():
            role = self._processes[pid]
            per_role[role] = per_role.get(role, 0.0) + seconds - self._start.get(pid, 0.0)
        total = machine[2] - self._machine_start[2]
        return CpuUse(
            per_role_seconds=per_role,
            busy_share=(machine[0] - self._machine_start[0]) / total if total else 0.0,
            steal_share=(machine[1] - self._machine_start[1]) / total if total else 0.0,
        )


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (e.g. `serve --workers 2`'s supervisor and its children)."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        with suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
                pending.extend(int(child) for child in children)
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of `pids` so far; a process that ended counts 0."""
    total = 0.0
    for pid in pids:
        with suppress(OSError):
            total += _cpu_seconds(pid)
    return total


def per_cpu_busy() -> list[tuple[float, float]]:
    """(busy, total) seconds since boot of each CPU, from /proc/stat's cpuN lines."""
    found = []
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            values = [int(v) for v in line.split()[1:9]]
            idle = values[3] + values[4] + values[7]  # idle, iowait, steal: not ours
            found.append(((sum(values) - idle) / TICKS, sum(values) / TICKS))
    return found


class PidMeter:
    """CPU of explicit processes by role: only the stack under test, not whatever else runs
    on a shared machine (another run's api or PostgreSQL backends would match by name)."""

    def __init__(self, roles: dict[str, list[int]]) -> None:
        self._roles = {role: list(pids) for role, pids in roles.items()}
        self._start = {pid: cpu_seconds([pid]) for pids in self._roles.values() for pid in pids}
        self._machine_start = _machine()
        self._cpus_start = per_cpu_busy()

    def stop(self, more: dict[str, list[int]] | None = None) -> CpuUse:
        """`more`: processes of a role that appeared meanwhile (counted from 0 if new)."""
        for role, pids in (more or {}).items():
            known = self._roles.setdefault(role, [])
            known.extend(pid for pid in pids if pid not in known)
        machine = _machine()
        per_role = {
            role: sum(cpu_seconds([pid]) - self._start.get(pid, 0.0) for pid in pids)
            for role, pids in self._roles.items()
        }
        total = machine[2] - self._machine_start[2]
        self.cpu_busy = [
            (end[0] - start[0]) / (end[1] - start[1]) if end[1] > start[1] else 0.0
            for start, end in zip(self._cpus_start, per_cpu_busy(), strict=False)
        ]
        return CpuUse(
            per_role_seconds=per_role,
            busy_share=(machine[0] - self._machine_start[0]) / total if total else 0.0,
            steal_share=(machine[1] - self._machine_start[1]) / total if total else 0.0,
        )
