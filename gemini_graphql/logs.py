"""Logging: one line per request and per job; JSON in production, readable in dev.

Lines carry the request or job id and the user id when known. What is logged
never includes a token, a code, a password or a key: the access log has the
method and path only (no query string, no headers, no body).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from gemini_graphql.config import Settings

# Attributes our log calls add with `extra=` and the JSON lines carry.
CONTEXT_FIELDS = ("request_id", "job_id", "user_id", "duration_ms", "status", "outcome")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class ReadableFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s%(context)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        pairs = [
            f"{name}={getattr(record, name)}"
            for name in CONTEXT_FIELDS
            if getattr(record, name, None) is not None and name not in ("duration_ms", "status")
        ]
        record.context = f"  [{' '.join(pairs)}]" if pairs else ""
        return super().format(record)


def configure_logging(settings: Settings) -> None:
    # Records skip what no line of ours shows (the logging HOWTO's "Optimization"): a lookup
    # of the calling source line and thread/process names cost more than the line itself.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.is_production else ReadableFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if settings.debug else logging.INFO)
    for noisy in ("httpx", "httpcore", "google_genai", "stripe", "aiosqlite", "fakeredis"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # uvicorn's own loggers go through ours (one format); its access log is replaced by ours.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    uvicorn_access = logging.getLogger("uvicorn.access")
    uvicorn_access.handlers[:] = []
    uvicorn_access.propagate = False
