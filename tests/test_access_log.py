"""ACCESS_LOG: which requests get an access log line, through the real app under uvicorn
(all, errors: what needs a look, off), and its default per environment."""

from __future__ import annotations

import logging
from dataclasses import replace

import httpx
import pytest
import websockets

from gemini_graphql.app.http_app import create_app
from gemini_graphql.config import AccessLog, ConfigError, Settings
from tests.conftest import RecordingSms
from tests.live import serve
from tests.test_config import PRODUCTION, STRONG

ACCESS = "gemini_graphql.access"
ME = {"query": "{ __typename }"}


async def logged_paths(
    settings: Settings, sms: RecordingSms, caplog: pytest.LogCaptureFixture
) -> list[str]:
    """The paths logged for: a good query, an unknown path (404), a body over the cap (413),
    and a websocket session, in that order."""
    caplog.set_level(logging.INFO, logger=ACCESS)
    app = create_app(settings, sms=sms)
    async with serve(app, settings) as url, httpx.AsyncClient(base_url=url) as http:
        assert (await http.post("/graphql", json=ME)).status_code == 200
        assert (await http.get("/nowhere")).status_code == 404
        too_big = b"x" * (settings.max_body_bytes + 1)
        answer = await http.post(
            "/graphql", content=too_big, headers={"content-type": "application/json"}
        )
        assert answer.status_code == 413
        async with websockets.connect(
            url.replace("http", "ws") + "/graphql", subprotocols=["graphql-transport-ws"]
        ) as socket:
            await socket.close()
    return [
        f"{record.args[0]} {record.args[1]} {record.args[2]}"  # type: ignore[index]
        for record in caplog.records
        if record.name == ACCESS
    ]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        (
            AccessLog.ALL,
            ["POST /graphql 200", "GET /nowhere 404", "POST /graphql 413", "WS /graphql -"],
        ),
        (AccessLog.ERRORS, ["GET /nowhere 404", "POST /graphql 413", "WS /graphql -"]),
        (AccessLog.OFF, []),
    ],
)
async def test_access_log_lines_follow_the_setting(
    base_settings: Settings,
    sms: RecordingSms,
    caplog: pytest.LogCaptureFixture,
    mode: AccessLog,
    expected: list[str],
) -> None:
    settings = replace(base_settings, access_log=mode)
    assert await logged_paths(settings, sms, caplog) == expected


def test_production_logs_errors_and_the_rest_log_all() -> None:
    production = {**PRODUCTION, "SECRET_KEY": STRONG}
    assert Settings.from_env(production).access_log is AccessLog.ERRORS
    assert Settings.from_env({}).access_log is AccessLog.ALL
    assert Settings.from_env({"APP_ENV": "test"}).access_log is AccessLog.ALL
    settings = Settings.from_env({**production, "ACCESS_LOG": "all"})
    assert settings.access_log is AccessLog.ALL
    with pytest.raises(ConfigError, match="ACCESS_LOG"):
        Settings.from_env({"ACCESS_LOG": "some"})
