"""Shared fixtures: real servers on free ports, a real Chromium, real databases."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# The database fixtures (`store`, `store_url`): SQLite always, PostgreSQL when configured.
pytest_plugins = ["store_fixtures"]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
REQUIRE_BROWSER = os.environ.get("TPMAP_REQUIRE_BROWSER") == "1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunningServer:
    """A `tpmap serve` process on a free port."""

    def __init__(self, db_url: str, log: Path, extra: list[str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db_url = db_url
        self._log = log.open("w")
        cmd = [sys.executable, "-m", "tpmap", "serve", "--db", db_url, "--port", str(self.port)]
        self.proc = subprocess.Popen(
            [*cmd, *(extra or [])], stdout=self._log, stderr=subprocess.STDOUT
        )
        self.log = log
        self._wait()

    def _wait(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tpmap serve exited:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(self.url + "/atlas", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"tpmap serve did not answer:\n{self.log.read_text()}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            self.proc.kill()
        self._log.close()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """Start `tpmap serve` processes: ``serve(db_url)`` returns the running server."""
    servers: list[RunningServer] = []

    def start(db_url: str | None = None, extra: list[str] | None = None) -> RunningServer:
        url = db_url or f"sqlite:///{tmp_path / 'tpmap.db'}"
        server = RunningServer(url, tmp_path / f"serve-{len(servers)}.log", extra)
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium driven by Playwright (no browser downloads)."""
    if not Path(CHROMIUM).exists():
        if REQUIRE_BROWSER:
            pytest.fail(f"Chromium is required for browser tests but {CHROMIUM} is missing")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A tablet-sized page (1024 x 768, touch enabled)."""
    context = browser.new_context(viewport={"width": 1024, "height": 768}, has_touch=True)
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    yield pg
    context.close()


@pytest.fixture(autouse=True)
def _snapshots_in_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    """Research snapshots (and servers started by tests) write under the test's tmp folder,
    never into the user's cache directory."""
    monkeypatch.setenv("TPMAP_SNAPSHOT_DIR", str(tmp_path_factory.getbasetemp() / "snapshots"))
