"""What tests outside Python need, installed on first use: the npm packages of tests/node
(README's Node client, Playwright) and Debian's chromium (never a browser download)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).resolve().parent / "node"
CHROMIUM = "/usr/bin/chromium"
# Chromium as the machine's closed network wants it: no background connections, no sandbox
# (tests run as root), a fresh profile per launch (Playwright makes one).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """tests/node/node_modules, installed from its lock file when missing or stale."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        _missing("node and npm are needed (Debian: apt-get install nodejs npm)")
    installed = NODE_DIR / "node_modules" / ".package-lock.json"
    lock = NODE_DIR / "package-lock.json"
    if not installed.is_file() or installed.stat().st_mtime < lock.stat().st_mtime:
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            check=True,
            timeout=300,
        )
    return NODE_DIR / "node_modules"


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed with apt when missing."""
    if not Path(CHROMIUM).is_file() and shutil.which("apt-get") and os.geteuid() == 0:
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(install, timeout=600, env=env, capture_output=True).returncode:
            # A fresh machine may not have the package lists yet.
            subprocess.run(["apt-get", "update", "-q"], timeout=600, env=env, capture_output=True)
            subprocess.run(install, check=True, timeout=600, env=env, capture_output=True)
    if not Path(CHROMIUM).is_file():
        _missing(f"{CHROMIUM} is needed (Debian: apt-get install chromium)")
    return CHROMIUM
