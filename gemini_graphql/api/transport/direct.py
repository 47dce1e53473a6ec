"""Subscription events a transport delivers itself, at once, as they arrive.

A websocket operation whose selection is flat (transport/events.py) can render an event and
write it in one synchronous call, without waking the operation's task and its chain of
generators for each event: most of a subscriber's share of an event's CPU. A subscription
resolver that can hand its events over that way (messageStream, through the relay's
Mailbox.direct) takes the operation's sink from here; the transport sets it for the
operation's own task (a ContextVar: each operation's task has its own copy).
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

Sink = Callable[[Any], bool]
"""Delivers one event (the root value the resolver would yield); False when it could not
(the socket's buffer is full, the selection needs executing...): then the resolver yields
it, as it would without a sink."""

_SINK: ContextVar[Sink | None] = ContextVar("gemini_graphql_direct_sink", default=None)


def operation_sink() -> Sink | None:
    """The running operation's sink, if its transport offers one."""
    return _SINK.get()


def offer_sink(sink: Sink) -> None:
    """For the rest of the current task (the operation's)."""
    _SINK.set(sink)
