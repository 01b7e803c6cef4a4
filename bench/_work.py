"""The benchmarks' one work folder, and a `tpmap serve` that writes only into it.

Benchmarks never write into the repository or into a user's home, data or cache folders.
Everything they keep (the 10^6-mark database, its server secret, research snapshots, a
served page's files) lives in one folder under the system temp dir, ``tpmap-bench``, or in
``$TPMAP_BENCH_DIR``. The folder is kept between runs so that the expensive database is
built once; delete it to start afresh.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "WORK_ENV",
    "free_port",
    "isolate",
    "scratch",
    "secret_file",
    "serve",
    "server_env",
    "stop",
    "work_dir",
]

#: Set it to keep the benchmarks' files somewhere else than ``<temp dir>/tpmap-bench``.
WORK_ENV = "TPMAP_BENCH_DIR"


def work_dir() -> Path:
    """The work folder, created (mode 0700) when missing.

    Raises
    ------
    RuntimeError
        When the folder belongs to another user: a shared /tmp must not hand our database
        and secret to whoever created the folder first.
    """
    root = Path(os.environ.get(WORK_ENV, "").strip() or Path(tempfile.gettempdir()) / "tpmap-bench")
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if hasattr(os, "getuid") and root.stat().st_uid != os.getuid():
        raise RuntimeError(f"{root} belongs to another user: set {WORK_ENV} to a folder of yours")
    return root


def _dirs(root: Path) -> dict[str, Path]:
    return {
        "XDG_DATA_HOME": root / "xdg" / "data",
        "XDG_CACHE_HOME": root / "xdg" / "cache",
        "XDG_CONFIG_HOME": root / "xdg" / "config",
        "TPMAP_SNAPSHOT_DIR": root / "snapshots",
        # datashader compiles with numba, whose cache would otherwise go next to its sources.
        "NUMBA_CACHE_DIR": root / "numba",
    }


def server_env(snapshot_dir: Path | None = None) -> dict[str, str]:
    """The environment for a subprocess: ``os.environ`` with the user's folders redirected.

    XDG data, cache and config folders and tpmap's snapshot folder all point into the work
    folder, so that a `tpmap serve` (or Chromium, or anything it starts) finds nothing of the
    user's and leaves nothing behind in the user's home. ``snapshot_dir`` replaces the
    shared snapshot folder (a bench that needs a cold snapshot passes a scratch folder).
    """
    env = dict(os.environ)
    dirs = _dirs(work_dir())
    if snapshot_dir is not None:
        dirs["TPMAP_SNAPSHOT_DIR"] = snapshot_dir
    for name, path in dirs.items():
        path.mkdir(parents=True, exist_ok=True)
        env[name] = str(path)
    # The bench's server reads its secret from the work folder, never the environment's.
    env.pop("TPMAP_SECRET", None)
    env.pop("TPMAP_DATABASE_URL", None)
    return env


def isolate() -> Path:
    """Redirect this process's own XDG and snapshot folders into the work folder.

    In-process code (platformdirs in tpmap, Playwright's driver, Chromium's caches) reads
    these variables when it needs a folder, so each bench calls this first. Returns the
    work folder.
    """
    os.environ.update(server_env())
    return work_dir()


def secret_file() -> Path:
    """The benchmarks' server secret (0600), generated once in the work folder."""
    path = work_dir() / "secret"
    if not path.exists():
        # O_EXCL with mode 0600: never readable by others, even for a moment.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(secrets.token_urlsafe(48) + "\n")
    return path


@contextmanager
def scratch(name: str) -> Iterator[Path]:
    """A fresh sub-folder of the work folder for one run (emptied before, removed after)."""
    path = work_dir() / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    """A TCP port free on the loopback address right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(
    url: str, *, snapshot_dir: Path | None = None, timeout: float = 30.0
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `tpmap serve` on ``url`` (a free port, the bench's secret, isolated folders).

    ``snapshot_dir`` as for :func:`server_env`. Returns the process and the server's base
    URL once ``/login`` answers. The server's output goes to ``serve.log`` in the work
    folder (read it when a bench fails).
    """
    port = free_port()
    log = (work_dir() / "serve.log").open("wb")
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "tpmap", "serve", "--db", url, "--port", str(port)),
            *("--secret-file", str(secret_file())),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=server_env(snapshot_dir),
        cwd=work_dir(),  # a relative path the server writes to lands here, not in the repo
    )
    log.close()  # the child holds its own copy
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tpmap serve exited ({proc.returncode}): see serve.log")
        try:
            urllib.request.urlopen(base + "/login", timeout=1).close()
            return proc, base
        except OSError:
            time.sleep(0.1)
    stop(proc)
    raise RuntimeError("tpmap serve did not start: see serve.log in the bench work folder")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End a server started by :func:`serve` (terminate, then kill after 10 s)."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
