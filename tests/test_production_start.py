"""The README's production steps, followed literally with real processes: copy .env.example
to .env, start the services the way docker compose would (its env_file and `environment:`,
the api's command, the image without the dev extra). They refuse, one line per unfilled
placeholder, until the placeholders are replaced; then `serve` starts in production mode.
And `dev` run in the same folder never picks that .env up."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from gemini_graphql.config import Settings
from gemini_graphql.testing.processes import free_port
from tests.test_deployment_files import (
    ROOT,
    ComposeError,
    compose_config,
    container_env,
    env_example,
    placeholder_names,
    read_env_file,
    without_dev_extra,
)


def edit_env_file(path: Path, **values: str) -> None:
    """Replace lines `NAME=...` in place, as an operator editing .env would."""
    text = path.read_text()
    for name, value in values.items():
        text, count = re.subn(rf"^{name}=.*$", f"{name}={value}", text, flags=re.MULTILINE)
        assert count == 1, name
    path.write_text(text)


def service_process(
    service: str, project: Path, settings: Settings, port: int
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment docker compose would run `service` with, from the
    .env in `project`; the stores are the test's, and the api listens on `port`."""
    dotenv = read_env_file(project / ".env")
    command = [str(part) for part in compose_config(dotenv)["services"][service]["command"]]
    if service == "api":
        assert command == ["serve", "--host", "0.0.0.0", "--port", "8000"]
        command = ["serve", "--host", "127.0.0.1", "--port", str(port)]
    env = {
        **container_env(service, dotenv),
        # The containers' stores are compose's postgres and redis services; here the test's.
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "REDIS_PREFIX": settings.redis_prefix,
        "PATH": os.environ.get("PATH", ""),
        "PYTHONUNBUFFERED": "1",  # the image's
        **without_dev_extra(project / "image-site"),  # the image has no dev extra
    }
    return [sys.executable, "-m", "gemini_graphql", *command], env


async def wait_healthy(process: subprocess.Popen[bytes], url: str, log: Path) -> dict:
    async with httpx.AsyncClient() as client, asyncio.timeout(60):
        while True:
            assert process.poll() is None, log.read_text()
            try:
                response = await client.get(f"{url}/health")
                if response.status_code == 200:
                    return response.json()
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)


async def stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(30):
            while process.poll() is None:
                await asyncio.sleep(0.05)
    except TimeoutError:
        process.kill()
        process.wait(timeout=10)
    return process.returncode


async def test_the_readme_production_steps_refuse_placeholders_then_start(
    tmp_path: Path, base_settings: Settings
) -> None:
    project = tmp_path / "deployment"
    project.mkdir()
    dotenv = project / ".env"
    shutil.copy(ROOT / ".env.example", dotenv)  # "copy .env.example to .env"
    placeholders = placeholder_names(read_env_file(dotenv))
    assert {"SECRET_KEY", "GEMINI_API_KEY", "SMS_WEBHOOK_URL"} <= placeholders

    # docker compose itself stops at the empty POSTGRES_PASSWORD, with one line.
    with pytest.raises(ComposeError, match="required variable POSTGRES_PASSWORD"):
        compose_config(read_env_file(dotenv))
    edit_env_file(dotenv, POSTGRES_PASSWORD=secrets.token_urlsafe(24))

    # The placeholders get past compose; every process it would start refuses them: exit 2,
    # one line per placeholder, naming it and saying what to put there, no traceback.
    port = free_port()
    for service in ("migrate", "api", "worker"):
        args, env = service_process(service, project, base_settings, port)
        assert env["APP_ENV"] == "production"
        result = subprocess.run(
            args, env=env, cwd=project, capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 2, (service, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert lines[0] == "gemini-graphql: invalid configuration:", result.stderr
        named = [line.strip().split(":")[0] for line in lines[1:]]
        assert sorted(named) == sorted(placeholders), result.stderr
        for line in lines[1:]:
            assert "still the placeholder from .env.example; " in line, line
        assert "Traceback" not in result.stderr and result.stdout == ""

    # Fill them in as .env.example says: now it starts, in production mode.
    secret_key = secrets.token_urlsafe(48)
    edit_env_file(
        dotenv,
        SECRET_KEY=secret_key,
        GEMINI_API_KEY="AIza-test-key-not-used-by-health",
        SMS_WEBHOOK_URL="http://127.0.0.1:9/sms",
    )
    assert placeholder_names(read_env_file(dotenv)) == set()
    args, env = service_process("api", project, base_settings, port)
    log = tmp_path / "api.log"
    with log.open("wb") as output:
        process = subprocess.Popen(args, env=env, cwd=project, stdout=output, stderr=output)
    url = f"http://127.0.0.1:{port}"
    try:
        health = await wait_healthy(process, url, log)
        assert health == {"status": "ok", "checks": {"postgres": "ok", "redis": "ok"}}
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            introspection = await client.post(
                "/graphql", json={"query": "{ __schema { queryType { name } } }"}
            )
            assert "errors" in introspection.json()  # introspection is off in production
            page = await client.get("/graphql", headers={"Accept": "text/html"})
            assert "graphiql" not in page.text.lower()  # and so is GraphiQL
    finally:
        returncode = await stop(process)
    output_text = log.read_text()
    assert returncode in (0, -signal.SIGTERM), output_text
    assert "Traceback" not in output_text and secret_key not in output_text
    records = [json.loads(line) for line in output_text.splitlines() if line.startswith("{")]
    assert records, output_text  # production logs: one JSON object a line


async def test_dev_in_the_same_folder_never_reads_the_production_env(tmp_path: Path) -> None:
    """A filled production .env in the working folder (APP_ENV=production, a Gemini key, a
    PostgreSQL URL) does not configure `dev`: it reads only its own environment, so it runs
    on its embedded stores and the offline model."""
    shutil.copy(ROOT / ".env.example", tmp_path / ".env")
    edit_env_file(
        tmp_path / ".env",
        SECRET_KEY=secrets.token_urlsafe(48),
        GEMINI_API_KEY="AIza-production-key",
        SMS_WEBHOOK_URL="http://127.0.0.1:9/sms",
        POSTGRES_PASSWORD=secrets.token_urlsafe(24),
    )
    documented = set(env_example())
    env = {key: value for key, value in os.environ.items() if key not in documented}
    port = free_port()
    log = tmp_path / "dev.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "gemini_graphql", "dev", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=output,
            stderr=output,
        )
    try:
        health = await wait_healthy(process, f"http://127.0.0.1:{port}", log)
    finally:
        returncode = await stop(process)
    output_text = log.read_text()
    assert returncode in (0, -signal.SIGTERM), output_text
    assert health["checks"] == {"sqlite": "ok", "redis": "ok"}
    assert "gemini: offline model" in output_text
    assert (tmp_path / ".gemini-graphql" / "dev.sqlite3").exists()
