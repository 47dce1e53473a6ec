"""The harness itself: tests that use no service run without PostgreSQL and Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Nothing listens on port 1: a connection is refused at once.
UNREACHABLE = {
    "TEST_POSTGRES_DSN": "postgresql://postgres@127.0.0.1:1/postgres",
    "TEST_REDIS_URL": "redis://127.0.0.1:1",
}


def test_tests_that_use_no_service_pass_with_the_services_unreachable() -> None:
    modules = ["tests/test_config.py", "tests/test_deployment_files.py"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *modules],
        check=False,
        cwd=ROOT,
        env={**os.environ, **UNREACHABLE},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "error" not in result.stdout.lower(), result.stdout
