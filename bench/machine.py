"""The machine a run had: its load when a section began, how busy it was and how much other
tenants took (steal) while it ran, and CPU pinning for the capacity rows.

The hosts are shared and noisy, so every row says under what load it was measured.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from bench.cpu import _machine


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@dataclass
class Section:
    """One part of `make bench`: how long it took and what the machine did meanwhile."""

    name: str
    load_at_start: str = field(default_factory=loadavg)
    seconds: float = 0.0
    busy_share: float = 0.0
    steal_share: float = 0.0

    def note(self) -> str:
        return (
            f"load {self.load_at_start} at start; busy {self.busy_share:.0%}, "
            f"steal {self.steal_share:.0%}"
        )


@contextmanager
def section(name: str, sections: list[Section]) -> Iterator[Section]:
    current = Section(name)
    sections.append(current)
    started, machine = time.perf_counter(), _machine()
    print(f"[bench] {name}: starting (load {current.load_at_start})", flush=True)
    try:
        yield current
    finally:
        end = _machine()
        total = end[2] - machine[2]
        current.seconds = time.perf_counter() - started
        current.busy_share = (end[0] - machine[0]) / total if total else 0.0
        current.steal_share = (end[1] - machine[1]) / total if total else 0.0
        print(f"[bench] {name}: {current.seconds:.0f} s ({current.note()})", flush=True)


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of `pid` (and of its children) on `cpus`; threads and processes started
    later inherit it."""
    from bench.cpu import process_tree

    for process in process_tree(pid):
        with suppress(OSError):
            for task in os.listdir(f"/proc/{process}/task"):
                with suppress(OSError):
                    os.sched_setaffinity(int(task), cpus)


@contextmanager
def pinned_self(cpus: set[int]) -> Iterator[None]:
    """This process (the load: publisher, and every load tool it starts meanwhile) on `cpus`."""
    before = os.sched_getaffinity(0)
    for task in os.listdir(f"/proc/{os.getpid()}/task"):  # not its children: the api is one
        with suppress(OSError):
            os.sched_setaffinity(int(task), cpus)
    try:
        yield
    finally:
        for task in os.listdir(f"/proc/{os.getpid()}/task"):
            with suppress(OSError):
                os.sched_setaffinity(int(task), before)


def raise_open_files() -> int:
    """The soft open-file limit up to the hard one, for this process and what it starts
    (10,000 subscriptions hold a socket each on both sides); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
