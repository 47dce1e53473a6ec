"""Time-ordered UUIDs (version 7, RFC 9562).

Rows get ids whose order is their creation order, so keyset pagination can
walk the primary key, and two ids made one after the other in this process
always compare in that order (the sub-millisecond bits count up).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import datetime

_lock = threading.Lock()
_last_ms = 0
_counter = 0
_COUNTER_MAX = 0xFFF


def new_id() -> uuid.UUID:
    global _last_ms, _counter
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > _last_ms:
            _last_ms = now_ms
            _counter = int.from_bytes(os.urandom(2), "big") & 0x7FF  # leave room to count up
        else:
            _counter += 1
            if _counter > _COUNTER_MAX:  # more than ~2k ids in one ms: borrow the next ms
                _last_ms += 1
                _counter = 0
        ms, counter = _last_ms, _counter
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand_b
    return uuid.UUID(int=value)


def id_floor(at: datetime) -> uuid.UUID:
    """The smallest id made at `at` or later: bounds a scan of a primary key by time."""
    return uuid.UUID(int=int(at.timestamp() * 1000) << 80)


def parse_id(raw: str) -> uuid.UUID | None:
    """The UUID in `raw`, or None when it is not one (callers answer NOT_FOUND)."""
    try:
        return uuid.UUID(raw)
    except (ValueError, AttributeError, TypeError):
        return None
