"""The kernel's share of a delivery on this host: the CPU one `send` of a small frame costs
the sender when its reader idles on the other CPU (a loopback TCP socket; the reader is woken
for each frame, as a device that waits for the next delta is). Printed next to the 3-vs-1
subscriber row: a second and a third device are a second and a third such write, whatever
the server does in Python.

    python -m bench.socket_floor   (prints µs per write)
"""

from __future__ import annotations

import os
import socket
import time

SENDER_CPU, READER_CPU = 0, 1
FRAME = b"x" * 120  # about a `next` message with one delta
WRITES = 4000
PAUSE = 0.0005  # between writes: the reader goes back to sleep


def _paced(sock: socket.socket | None) -> float:
    """CPU seconds of WRITES paced rounds, with a write each if `sock`."""
    started = time.process_time()
    for _ in range(WRITES):
        if sock is not None:
            sock.send(FRAME)
        deadline = time.perf_counter() + PAUSE
        while time.perf_counter() < deadline:  # a spin, not a sleep: no timer's own cost
            pass
    return time.process_time() - started


def idle_reader_write_us() -> float:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    reader = os.fork()
    if reader == 0:  # pragma: no cover - the child
        os.sched_setaffinity(0, {READER_CPU})
        with socket.create_connection(("127.0.0.1", port)) as conn:
            while conn.recv(65536):
                pass
        os._exit(0)
    os.sched_setaffinity(0, {SENDER_CPU})
    sock, _ = listener.accept()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        spin = _paced(None)
        with_writes = _paced(sock)
    finally:
        sock.close()
        listener.close()
        os.waitpid(reader, 0)
    return max(0.0, with_writes - spin) / WRITES * 1e6


if __name__ == "__main__":
    print(f"{idle_reader_write_us():.1f}")
