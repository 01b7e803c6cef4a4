"""Shared fixtures: real servers on free ports, a real Chromium, real databases."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Tests write only into temporary folders: the user's data, cache and config folders (the
# default database, research snapshots, a generated server secret) point into a fresh
# temporary folder for the whole run, servers started by tests included. Every store keys
# its audit trail with a test secret, never reading or generating the real one.
_HOME = Path(tempfile.mkdtemp(prefix="tpmap-tests-"))
for _var in ("XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME"):
    os.environ[_var] = str(_HOME / _var.lower())
TEST_SECRET = "tpmap-test-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
os.environ.setdefault("TPMAP_SECRET", TEST_SECRET)

# The database fixtures (`store`, `store_url`): SQLite always, PostgreSQL when configured.
pytest_plugins = ["store_fixtures"]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
REQUIRE_BROWSER = os.environ.get("TPMAP_REQUIRE_BROWSER") == "1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Password of the accounts the `serve` fixture creates (see :data:`ACCOUNTS`).
TEST_PASSWORD = "correct horse battery"
#: Accounts in every served test database: name -> (roles, clinics). "Default clinic" holds
#: every patient a test creates through the unscoped store.
ACCOUNTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "clinician": (("clinician",), ("Default clinic",)),
    "researcher": (("researcher",), ()),
}


def ensure_accounts(db_url: str) -> None:
    """Create :data:`ACCOUNTS` in the database at ``db_url`` (those that are missing)."""
    from tpmap.store import Store

    with Store(db_url) as store:
        existing = {u.name for u in store.list_users()}
        for name, (roles, clinics) in ACCOUNTS.items():
            if name not in existing:
                store.add_user(name, TEST_PASSWORD, roles=roles, clinics=clinics, user="tests")


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
                with urllib.request.urlopen(self.url + "/login", timeout=2) as r:
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
        ensure_accounts(url)
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


def sign_in(page, server: RunningServer, name: str = "clinician", next_path: str = "") -> None:
    """Sign ``page`` in to ``server`` as one of :data:`ACCOUNTS` through the real form.

    With ``next_path`` (e.g. ``/annotate``) the page goes there afterwards.
    """
    query = f"?next={next_path}" if next_path else ""
    page.goto(f"{server.url}/login{query}")
    page.locator("#name").fill(name)
    page.locator("#password").fill(TEST_PASSWORD)
    with page.expect_navigation():
        page.locator("button[type=submit]").click()
    if "/login" in page.url:
        message = page.locator("#message").inner_text()
        raise AssertionError(f"signing in as {name} failed: {message}")


@pytest.fixture(autouse=True)
def _snapshots_in_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch) -> None:
    """Research snapshots (and servers started by tests) write under the test's tmp folder,
    never into the user's cache directory."""
    monkeypatch.setenv("TPMAP_SNAPSHOT_DIR", str(tmp_path_factory.getbasetemp() / "snapshots"))
