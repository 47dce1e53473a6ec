"""GraphQL over WebSocket (the graphql-transport-ws protocol) on graphql-core directly.

One process holds thousands of idle subscriptions and fans out thousands of events a
second. Strawberry's handler kept, per subscription, its extension runners and execution
context alive, and ran each event through several layers before it reached the socket.
Here a connection is this object and its operations' tasks; documents come from the same
`Documents` cache as HTTP; each event is executed by graphql-core (with Strawberry's
execution context, so resolvers see what they see over HTTP) and written as one frame.
When the schema has extensions, operations run through their hooks (`extensions.py`).

The protocol: https://github.com/enisdenjo/graphql-ws/blob/master/PROTOCOL.md
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import orjson
import strawberry
from graphql import DocumentNode, ExecutionResult, GraphQLError, GraphQLSchema, OperationType
from graphql.execution import Executor, map_source_to_response_event
from prometheus_client import Counter
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from gemini_graphql.api.context import Context
from gemini_graphql.api.errors import BAD_REQUEST, apply_error_policy
from gemini_graphql.api.transport.direct import offer_sink
from gemini_graphql.api.transport.documents import Documents
from gemini_graphql.api.transport.events import FlatEvents
from gemini_graphql.api.transport.execution import (
    GraphQLParams,
    InvalidParams,
    event_source,
    guarded,
    run,
    subscription_executor,
)
from gemini_graphql.api.transport.extensions import SchemaHooks
from gemini_graphql.api.transport.operation_metrics import (
    OperationMetrics,
    OperationSeries,
    count_errors,
)
from gemini_graphql.api.transport.strawberry_seams import graphql_schema
from gemini_graphql.config import Settings
from gemini_graphql.errors import Unauthenticated
from gemini_graphql.infra.leases import Lease, Leases
from gemini_graphql.infra.outages import is_outage
from gemini_graphql.metrics import SUBSCRIPTION_EVENTS_DIRECT, WEBSOCKETS_OPEN

log = logging.getLogger(__name__)

PROTOCOL = "graphql-transport-ws"
CONNECTION_INIT_TIMEOUT_SECONDS = 10.0
# A reader too slow for what it subscribed to: the server's buffer is full and this many
# messages wait for it to drain, or one has waited this long. The connection is closed.
MAX_WAITING_SENDS = 64
MAX_SEND_WAIT_SECONDS = 30.0
CLOSE_TIMEOUT_SECONDS = 1.0
# The ASGI extension of our uvicorn protocol (web/websocket_protocol.py): writes one text
# message (UTF-8 bytes) at once, or returns False (flow control, closing) for `send` to do.
SEND_NOWAIT = "gemini_graphql.websocket.send_nowait"
SendNow = Callable[[bytes], bool]


def _encode(message: dict[str, Any]) -> str:
    """A frame's JSON: orjson, as each delta is encoded once per subscriber (a `next` frame in
    0.3 us rather than json's 4); back to str, as the protocol's frames are text."""
    return orjson.dumps(message).decode()


class _Gone(Exception):
    """The socket closed under us: whatever was being sent has nobody to go to."""


class _TooSlow(Exception):
    """The client does not read what it subscribed to: its messages pile up here."""


class _Close(Exception):
    """Ends the connection with a protocol close code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _Limits:
    max_message: int  # characters, the same number as the body cap's bytes
    # Operations running at once (each a task and a Redis channel; as Strawberry's
    # max_subscriptions_per_connection); the next subscribe gets an `error`.
    max_operations: int
    leases: Leases  # one per open connection of a user, across processes (else 4429)
    metrics: OperationMetrics


@dataclass(frozen=True, slots=True)
class _Subscribe:
    id: str
    params: GraphQLParams


class GraphQLWebSocket:
    """The /graphql websocket endpoint."""

    def __init__(
        self,
        schema: strawberry.Schema,
        documents: Documents,
        hooks: SchemaHooks | None,
        settings: Settings,
        *,
        metrics: OperationMetrics,
    ) -> None:
        self._schema = graphql_schema(schema)
        self._documents = documents
        self._hooks = hooks
        self._settings = settings
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        websocket = WebSocket(scope, receive, send)
        origin = websocket.headers.get("origin")
        if origin is not None and not self._settings.allows_origin(origin):
            await send({"type": "websocket.close", "code": 1008})  # before accept: HTTP 403
            return
        if PROTOCOL not in websocket.scope.get("subprotocols", ()):
            await websocket.accept()
            await websocket.close(4406, "Subprotocol not acceptable")
            return
        await websocket.accept(subprotocol=PROTOCOL)
        context = Context.of(websocket)
        connection = _Connection(
            self._schema,
            self._documents,
            self._hooks,
            context,
            receive,
            send,
            scope.get("extensions", {}).get(SEND_NOWAIT),
            _Limits(
                max_message=self._settings.max_body_bytes,
                max_operations=self._settings.max_operations_per_connection,
                leases=websocket.app.state.websocket_leases,
                metrics=self._metrics,
            ),
        )
        WEBSOCKETS_OPEN.inc()
        try:
            await connection.run()
        finally:
            WEBSOCKETS_OPEN.dec()


class _Connection:
    __slots__ = (
        "_acknowledged",
        "_context",
        "_documents",
        "_hooks",
        "_lease",
        "_limits",
        "_main",
        "_open",
        "_operations",
        "_receive",
        "_schema",
        "_send",
        "_send_now",
        "_too_slow",
        "_waiting",
        "_waiting_since",
    )

    def __init__(
        self,
        schema: GraphQLSchema,
        documents: Documents,
        hooks: SchemaHooks | None,
        context: Context,
        receive: Receive,
        send: Send,
        send_now: SendNow | None,
        limits: _Limits,
    ) -> None:
        """`send_now`: the server's SEND_NOWAIT extension, if it has it."""
        self._schema = schema
        self._documents = documents
        self._hooks = hooks
        self._context = context
        self._receive = receive
        self._send = send
        self._send_now = send_now
        self._limits = limits
        self._lease: Lease | None = None
        self._acknowledged = False
        self._open = True
        self._operations: dict[str, asyncio.Task[None]] = {}
        self._main: asyncio.Task[Any] | None = None
        self._too_slow = False
        # Sends under way and when the oldest began: a send only waits when the server's
        # buffer for this socket is full, so these cost no timer per message.
        self._waiting = 0
        self._waiting_since = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        init_deadline = loop.time() + CONNECTION_INIT_TIMEOUT_SECONDS
        self._main = asyncio.current_task()
        try:
            while self._open:
                if self._acknowledged:
                    message = await self._receive()
                else:
                    message = await self._receive_before(init_deadline)
                if message["type"] == "websocket.disconnect":
                    self._open = False
                    break
                await self._handle(message)
        except _Close as close:
            await self._close(close.code, close.reason)
        except _Gone:
            pass
        except (_TooSlow, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError):
                if not self._too_slow:
                    raise
                # Woken by an operation that found the reader too slow (see _write).
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
            self._too_slow = True
            log.warning(
                "closed a websocket whose client did not read (request %s)",
                self._context.request_id,
            )
            await self._close(1008, "Messages were not read fast enough")
        finally:
            for task in self._operations.values():
                task.cancel()
            if self._operations:
                await asyncio.gather(*self._operations.values(), return_exceptions=True)
            if self._lease is not None:
                await self._limits.leases.release(self._lease)

    async def _receive_before(self, deadline: float) -> Message:
        try:
            async with asyncio.timeout_at(deadline):
                return await self._receive()
        except TimeoutError:
            raise _Close(4408, "Connection initialisation timeout") from None

    async def _handle(self, frame: Message) -> None:
        text = frame.get("text")
        if text is None:  # the protocol's messages are JSON text
            raise _Close(4400, "WebSocket message type must be text")
        limit = self._limits.max_message
        if len(text) > limit:  # the server's own frame cap is the first line
            raise _Close(1009, f"Message too big (limit {limit} bytes)")
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):
            raise _Close(4400, "Invalid message") from None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise _Close(4400, "Invalid message")
        kind = message["type"]
        if kind == "connection_init":
            await self._connection_init(message.get("payload"))
        elif kind == "ping":
            await self._write({"type": "pong"})
        elif kind == "pong":
            pass
        elif kind == "subscribe":
            await self._start(_subscribe_message(message))
        elif kind == "complete":
            if isinstance(message.get("id"), str) and (task := self._operations.get(message["id"])):
                task.cancel()  # the client stopped it: no "complete" goes back
        else:
            raise _Close(4400, f"Unknown message type {kind[:32]!r}")

    async def _connection_init(self, payload: object) -> None:
        # Messages are handled one at a time and a failed init closes the connection, so a
        # second init can only arrive after an acknowledged one.
        if self._acknowledged:
            raise _Close(4429, "Too many initialisation requests")
        if payload is not None and not isinstance(payload, dict):
            raise _Close(4400, "The connection_init payload must be an object")
        self._context.connection_params = payload or {}
        try:
            user = await self._context.user()
            self._lease = await self._limits.leases.take(str(user.id))
        except Unauthenticated as exc:  # which: no token, token invalid, expired or revoked
            raise _Close(4403, f"Forbidden: {exc.reason}") from None
        except Exception as exc:  # noqa: BLE001 - graphql-core lets a resolver's error out here
            if not is_outage(exc):
                raise
            raise _Close(1013, "Service unavailable; try again shortly") from None  # RFC 6455
        if self._lease is None:
            raise _Close(4429, "Too many open connections for this user")
        self._acknowledged = True
        await self._write({"type": "connection_ack"})

    async def _start(self, request: _Subscribe) -> None:
        if not self._acknowledged:
            raise _Close(4401, "Unauthorized")
        if request.id in self._operations:
            raise _Close(4409, f"Subscriber for {request.id[:64]} already exists")
        if len(self._operations) >= (limit := self._limits.max_operations):
            message = f"Too many operations on this connection (at most {limit} at once)."
            error = {"message": message, "extensions": {"code": BAD_REQUEST}}
            await self._write_error(request.id, [error])
            return
        task = asyncio.create_task(self._run_operation(request))
        self._operations[request.id] = task
        task.add_done_callback(lambda _: self._operations.pop(request.id, None))

    async def _run_operation(self, request: _Subscribe) -> None:
        series = self._limits.metrics.series(request.params)
        series.count.inc()
        started = time.perf_counter()
        if series.active is not None:
            series.active.inc()
        try:
            await self._operate(request, series)
        except _Gone:
            pass
        except _TooSlow:
            if not self._too_slow and self._main is not None and not self._main.done():
                self._too_slow = True
                self._main.cancel()  # once: run() closes the connection
        except Exception:
            log.exception("websocket operation failed (request %s)", self._context.request_id)
        finally:
            if series.active is not None:
                series.active.dec()
            else:
                series.duration.observe(time.perf_counter() - started)

    async def _operate(self, request: _Subscribe, series: OperationSeries) -> None:
        params = request.params
        events = series.events  # counted for subscriptions only
        if self._hooks is not None:
            async with aclosing(self._hooks.stream(params, self._context)) as results:
                async for hooked in results:
                    if hooked.refused:  # the protocol's `error`: the operation ends, no complete
                        payload = [error.formatted for error in hooked.result.errors or ()]
                        await self._write_error(request.id, payload)
                        return
                    await self._send_result(request.id, hooked.result)
                    if events is not None:
                        events.inc()
            await self._write({"id": request.id, "type": "complete"})
            return
        prepared = self._documents.prepare(params.query)
        if prepared.errors:
            await self._write_error(request.id, list(prepared.errors))
            return
        kind = prepared.operation_type(params.operation_name)
        if kind is not OperationType.SUBSCRIPTION:  # a query or mutation: one result
            result = await run(
                self._schema,
                prepared.document,  # type: ignore[arg-type]
                self._context,
                params.variables,
                params.operation_name,
                hide_suggestions=self._documents.hide_suggestions,
            )
            await self._next(request.id, result)
        else:
            source = await self._subscribe(prepared.document, params, request.id, events)  # type: ignore[arg-type]
            if isinstance(source, ExecutionResult):  # e.g. bad variables: nothing to stream
                await self._next(request.id, source)
            else:
                await self._stream(request.id, source, events)
        await self._write({"id": request.id, "type": "complete"})

    async def _subscribe(
        self,
        document: DocumentNode,
        params: GraphQLParams,
        op_id: str,
        events: Counter | None,
    ) -> AsyncGenerator[ExecutionResult, None] | ExecutionResult:
        """graphql-core's `subscribe`, with flat selections rendered without executing, and
        written at once by a resolver that can (transport/direct.py)."""

        def build() -> Executor | list[GraphQLError]:
            return subscription_executor(
                self._schema,
                document,
                self._context,
                params.variables,
                params.operation_name,
                hide_suggestions=self._documents.hide_suggestions,
            )

        executor = build()
        if isinstance(executor, list):
            return ExecutionResult(None, errors=executor)
        source = await event_source(executor)
        if isinstance(source, ExecutionResult):
            return source
        flat = FlatEvents.of(self._schema, executor.operation)
        if flat is None:
            return map_source_to_response_event(executor, source)  # type: ignore[arg-type]
        if self._send_now is not None:
            offer_sink(_DirectNext(self, op_id, flat, events))
        return flat.results(build, source)  # type: ignore[arg-type]

    async def _stream(
        self,
        op_id: str,
        source: AsyncGenerator[ExecutionResult, None],
        events: Counter | None,
    ) -> None:
        # A stopped operation lets go of its source at once.
        async with aclosing(guarded(source)) as results:
            async for result in results:
                await self._next(op_id, result)
                if events is not None:
                    events.inc()

    async def _next(self, op_id: str, result: ExecutionResult) -> None:
        if result.errors:
            apply_error_policy(result.errors, self._context.request_id)
        await self._send_result(op_id, result)

    async def _send_result(self, op_id: str, result: ExecutionResult) -> None:
        """`result`, the error policy already applied, as a `next` message."""
        payload: dict[str, Any] = {"data": result.data}
        if result.errors:
            payload["errors"] = [error.formatted for error in result.errors]
            count_errors(payload["errors"])
        if result.extensions:
            payload["extensions"] = result.extensions
        await self._write({"id": op_id, "type": "next", "payload": payload})

    async def _write_error(self, op_id: str, errors: list[dict[str, Any]]) -> None:
        """The protocol's `error` message: the operation was refused and ends."""
        count_errors(errors)
        await self._write({"id": op_id, "type": "error", "payload": errors})

    async def _write(self, message: dict[str, Any]) -> None:
        if not self._open:
            raise _Gone
        if self._waiting:  # the buffer was full at the last send: is the reader keeping up?
            waited = asyncio.get_running_loop().time() - self._waiting_since
            if self._waiting >= MAX_WAITING_SENDS or waited > MAX_SEND_WAIT_SECONDS:
                raise _TooSlow
        else:
            self._waiting_since = asyncio.get_running_loop().time()
        self._waiting += 1
        try:
            await self._send({"type": "websocket.send", "text": _encode(message)})
        except (OSError, RuntimeError):  # closed under us (uvicorn raises on a dead socket)
            self._open = False
            raise _Gone from None
        finally:
            self._waiting -= 1

    async def _close(self, code: int, reason: str) -> None:
        if not self._open and not self._too_slow:
            return
        self._open = False
        try:  # a full buffer holds back the close frame too: then the socket just ends
            async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                await self._send({"type": "websocket.close", "code": code, "reason": reason})
        except (OSError, RuntimeError, TimeoutError):
            pass


class _DirectNext:
    """An operation's Sink (transport/direct.py): writes an event's `next` message at once,
    while nothing else of its connection waits to be written (so messages keep their order)
    and the operation goes on. An object of slots, not a closure: every idle subscription
    holds one."""

    __slots__ = ("_connection", "_events", "_flat", "_head", "_op_id")

    def __init__(
        self, connection: _Connection, op_id: str, flat: FlatEvents, events: Counter | None
    ) -> None:
        assert connection._send_now is not None
        self._connection = connection
        # The operation's task is looked up, not held: the task's context holds this sink,
        # and a reference back would keep every finished operation until the cycle collector
        # got round to it.
        self._op_id = op_id
        self._flat = flat
        self._events = events
        self._head = b'{"id":' + orjson.dumps(op_id) + b',"type":"next","payload":{"data":'

    def __call__(self, event: Any) -> bool:
        connection = self._connection
        if not connection._open or connection._waiting:
            return False
        task = connection._operations.get(self._op_id)
        if task is None or task.cancelling():  # completed by the client, or closing
            return False
        data = self._flat.data(event)
        if data is None or not connection._send_now(self._head + orjson.dumps(data) + b"}}"):  # type: ignore[misc]
            return False
        if self._events is not None:
            self._events.inc()
        SUBSCRIPTION_EVENTS_DIRECT.inc()
        return True


def _subscribe_message(message: dict[str, Any]) -> _Subscribe:
    op_id, payload = message.get("id"), message.get("payload")
    if not isinstance(op_id, str) or not op_id or not isinstance(payload, dict):
        raise _Close(4400, "A subscribe message needs an id and a payload")
    try:
        params = GraphQLParams.of(
            payload.get("query"), payload.get("variables"), payload.get("operationName")
        )
    except InvalidParams as error:
        raise _Close(4400, str(error)) from None
    return _Subscribe(op_id, params)
