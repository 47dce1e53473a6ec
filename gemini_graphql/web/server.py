"""How uvicorn runs the app: one set of options for `serve`, `dev` and the tests, an HTTP
protocol that drops clients too slow (or too long-winded) with a request's head, and the
server `serve` runs, which drains before it stops (DrainingServer)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.supervisors import multiprocess

from gemini_graphql.config import Settings
from gemini_graphql.web.drain import STATE_KEY, Drain
from gemini_graphql.web.security_headers import API_CSP, STATIC_HEADERS
from gemini_graphql.web.websocket_protocol import LeanWebSocketProtocol

log = logging.getLogger(__name__)
EXIT_SIGNALS = (signal.SIGINT, signal.SIGTERM)

# uvicorn's default: an idle keep-alive connection is closed after this many seconds.
KEEP_ALIVE_SECONDS = 5
# httptools buffers a request line or header of any length: a head over this is refused.
MAX_HEAD_BYTES = 64 * 1024


class HeadWithBody:
    """One response's transport: the head uvicorn writes at `http.response.start` waits for
    the first piece of its body, so a small response leaves in one write (one syscall, one
    TCP segment) rather than two. A head still alone when the loop's turn ends goes alone
    (a response whose body is slow to come). Everything else is the transport's."""

    __slots__ = ("_loop", "_pending", "_started", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: bytes | None = None
        self._started = False

    def write(self, data: bytes) -> None:
        if not self._started:
            self._started = True
            self._pending = data
            self._loop.call_soon(self._flush)
            return
        if self._pending is not None:
            data, self._pending = self._pending + data, None
        self._transport.write(data)

    def _flush(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            if not self._transport.is_closing():
                self._transport.write(pending)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class SlowClientProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request's head, and each
    response's head written with its body (HeadWithBody).

    uvicorn stops its keep-alive timer at a request's first byte, then waits for the rest
    of the head for as long as the client likes: one header byte every few seconds holds a
    connection forever. Here a timer runs from the moment a connection opens, and again
    from the moment a response is complete, until the next head is complete; when it fires
    the connection is closed, with a 408 if a request had begun. Bodies are timed by
    BodySizeLimitMiddleware, where the answer gets the app's headers.

    Every override calls uvicorn's method and only adds to it.
    """

    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout = header_timeout
        self._header_timer: asyncio.TimerHandle | None = None
        self._in_head = False  # a request's first byte came, its head is not complete
        self._head_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        in_head = self._in_head
        super().data_received(data)
        # Only chunks wholly inside one head count: one that starts it may end a body.
        if in_head and self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse(431, f"Request head too large (limit {MAX_HEAD_BYTES} bytes).")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_header_timer()
        super().on_headers_complete()
        if self.cycle is not None:  # the request's, just made
            self.cycle.transport = HeadWithBody(self.transport, self.loop)  # type: ignore[assignment]

    def on_response_complete(self) -> None:
        next_head_in = bool(self.pipeline)  # a pipelined request, about to start
        super().on_response_complete()
        if not next_head_in and not self.transport.is_closing():
            self._start_header_timer()

    def _start_header_timer(self) -> None:
        self._stop_header_timer()
        self._header_timer = self.loop.call_later(self._header_timeout, self._header_timed_out)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._in_head:
            self._refuse(408, "Request headers not received in time.")
        else:
            self.transport.close()  # nothing asked, nothing to answer

    def _refuse(self, status: int, message: str) -> None:
        """Answer `status` and close, or only close if a response is being written."""
        if self.cycle is None or self.cycle.response_complete:
            body = message.encode()
            headers = [
                *self.server_state.default_headers,
                *STATIC_HEADERS,
                (b"content-security-policy", API_CSP),
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ]
            lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}".encode()]
            lines += [name + b": " + value for name, value in headers]
            self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        self.transport.close()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The keyword options every uvicorn that runs the app gets (`serve`, `dev`, tests)."""
    return {
        # A partial, not a class made on the fly: `serve --workers` pickles it.
        "http": functools.partial(
            SlowClientProtocol, header_timeout=settings.http_header_timeout_seconds
        ),
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        # uvicorn's sans-I/O websockets protocol (timers where the legacy one keeps three
        # tasks and a queue per connection: 33.6 KB of RSS per idle subscription at 10,000
        # against 41.5 KB, measured side by side), letting go of its handshake.
        "ws": LeanWebSocketProtocol,
        "ws_max_size": settings.max_body_bytes,  # the cap on HTTP bodies, for messages
        "ws_per_message_deflate": False,  # zlib state per socket outweighs an idle subscription
        "server_header": False,  # no version to look up vulnerabilities by
        "log_config": None,  # keep the app's logging (JSON in production)
        "access_log": False,  # RequestIdMiddleware logs each request with its id
    }


class ServeConfig(uvicorn.Config):
    """uvicorn's Config with the drain's grace, which reaches `--workers` children with it."""

    def __init__(self, app: Any, *, drain_grace_seconds: float = 0.0, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.drain_grace_seconds = drain_grace_seconds


class DrainingServer(uvicorn.Server):
    """uvicorn's server, which drains before its own shutdown.

    The first SIGTERM or SIGINT marks the process draining (/health/ready answers 503, see
    web/drain.py) and starts the grace, while everything goes on being served, new
    connections too: load balancers take a while to notice and stop sending traffic. When
    the grace ends, or at a second signal, uvicorn's shutdown runs as ever: it stops
    listening, closes websockets with 1012 and lets requests finish within
    timeout_graceful_shutdown. A signal before the server listens, or with no grace, goes
    straight to uvicorn.
    """

    def __init__(self, config: ServeConfig) -> None:
        super().__init__(config)
        self.grace_seconds = config.drain_grace_seconds
        self.drain = Drain()
        self._grace_ends: float | None = None
        self._drain_signal = signal.SIGTERM
        self._announced = False

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # Before the app's lifespan starts: uvicorn copies this state into every request.
        self.lifespan.state[STATE_KEY] = self.drain
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain.draining or not self.started or self.grace_seconds <= 0:
            super().handle_exit(sig, frame)
            return
        # A signal handler, run between any two bytecodes: it only sets fields; on_tick,
        # which uvicorn's main loop runs every 0.1 s, does the rest.
        self.drain.start()
        self._drain_signal = signal.Signals(sig)
        self._grace_ends = time.monotonic() + self.grace_seconds

    async def on_tick(self, counter: int) -> bool:
        if self._grace_ends is not None and not self.should_exit:
            if not self._announced:
                self._announced = True
                log.info(
                    "%s: draining: /health/ready answers 503, serving goes on for %g s, then "
                    "shutdown (a second signal: at once)",
                    self._drain_signal.name,
                    self.grace_seconds,
                )
            if time.monotonic() >= self._grace_ends:
                super().handle_exit(self._drain_signal, None)
        return await super().on_tick(counter)


class DrainingProcess(multiprocess.Process):
    """uvicorn's `--workers` child process, running a DrainingServer."""

    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            assert isinstance(self.config, ServeConfig)
            self._server = DrainingServer(self.config)
        return self._server


class Supervisor(multiprocess.Multiprocess):
    """uvicorn's `--workers` supervisor, with DrainingServer in every child.

    uvicorn sends each child SIGTERM on the first SIGINT/SIGTERM (which starts its drain),
    then waits for them; here any later one is passed on too, so that a second signal skips
    the children's grace as it does for a single process.
    """

    def run(self) -> None:
        # Multiprocess makes every child (at start, on SIGHUP, when one dies) with its
        # module's `Process`, a plain uvicorn.Server inside, and takes no class to use
        # instead: ours stands there while the supervisor runs (the process does nothing
        # else). tests/test_drain.py fails if uvicorn's children stop draining.
        uvicorn_process = multiprocess.Process
        multiprocess.Process = DrainingProcess  # type: ignore[misc]
        try:
            super().run()
        finally:
            multiprocess.Process = uvicorn_process  # type: ignore[misc]

    def handle_int(self) -> None:
        self._exit_signal(signal.SIGINT, super().handle_int)

    def handle_term(self) -> None:
        self._exit_signal(signal.SIGTERM, super().handle_term)

    def join_all(self) -> None:
        """uvicorn's, passing on the exit signals that come while the children drain."""
        for process in self.processes:
            log.info("Waiting for child process [%s]", process.pid)
            while process.exitcode is None:
                process.process.join(0.1)
                for sig in [sig for sig in self.signal_queue if sig in EXIT_SIGNALS]:
                    self.signal_queue.remove(sig)
                    self._signal_children(sig)

    def _exit_signal(self, sig: signal.Signals, first: Callable[[], None]) -> None:
        if self.should_exit.is_set():  # a second one, before uvicorn's SIGTERM to each child
            self._signal_children(sig)
        else:
            first()

    def _signal_children(self, sig: int) -> None:
        for process in self.processes:
            if process.exitcode is None and process.pid is not None:
                os.kill(process.pid, sig)


def run(config: ServeConfig) -> int:
    """Serve until told to stop, as uvicorn.run does: in this process, or in `config.workers`
    children under uvicorn's supervisor. The exit status: 0 once stopped by a signal (the
    stop was asked for), uvicorn's STARTUP_FAILURE if a single server never started."""
    with _signals_end_normally():
        if config.workers > 1:
            Supervisor(config, sockets=[config.bind_socket()]).run()
            return 0
        config.load_app()
        server = DrainingServer(config)
        server.run()
        return 0 if server.started else STARTUP_FAILURE


@contextlib.contextmanager
def _signals_end_normally() -> Iterator[None]:
    """SIGINT and SIGTERM outside uvicorn's own handlers end the process with status 0: before
    the server installs them (while the app is imported), and when uvicorn, having stopped,
    raises the signal that stopped it once more for whoever handled it before."""

    def stop(sig: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    previous = {sig: signal.signal(sig, stop) for sig in EXIT_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
