"""The baseline: a bare Starlette endpoint answering a fixed JSON body (RAW_BODY_BYTES long)."""

from __future__ import annotations

import json
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

_size = int(os.environ.get("RAW_BODY_BYTES", "100"))
_skeleton = json.dumps({"data": {"pad": ""}})
BODY = json.dumps({"data": {"pad": "x" * max(0, _size - len(_skeleton))}}).encode()


async def raw(request: Request) -> Response:
    await request.body()
    return Response(BODY, media_type="application/json")


app = Starlette(routes=[Route("/raw", raw, methods=["GET", "POST"])])
