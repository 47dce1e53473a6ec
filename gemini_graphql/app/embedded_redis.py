"""An in-process Redis-compatible server for the dev mode (fakeredis over real TCP).

The app talks to it exactly as to Redis, so the queue, pub/sub, streams and
caches run through the production code paths. It keeps nothing on disk, which
is fine: losing Redis loses no user data.
"""

from __future__ import annotations

import threading

from fakeredis import TcpFakeServer
from fakeredis._commands import command
from fakeredis._socket._fakesocket import FakeSocket


@command((), (bytes,))
def info(self: FakeSocket, *sections: bytes) -> bytes:
    """INFO, which fakeredis lacks and arq's worker asks for once at start."""
    return b"# Server\r\nredis_version:7.2.0\r\nredis_mode:embedded\r\n"


FakeSocket.info = info  # type: ignore[attr-defined]


class EmbeddedRedis:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = TcpFakeServer((host, port), server_type="redis")
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="embedded-redis", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"redis://{host!s}:{port}/0"

    def start(self) -> EmbeddedRedis:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
