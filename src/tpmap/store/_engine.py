"""Engine construction: the default database location and per-backend connection setup."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import platformdirs
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.pool import StaticPool

__all__ = ["WRITE_OPTION", "default_database_url", "make_engine"]

ENV_VAR = "TPMAP_DATABASE_URL"
#: Execution option marking a transaction that will write (SQLite then takes the lock up front).
WRITE_OPTION = "tpmap_write"
_BUSY_TIMEOUT_MS = 30_000


def default_database_url() -> str:
    """Return ``$TPMAP_DATABASE_URL``, else a SQLite file ``tpmap.db`` in the user data dir."""
    url = os.environ.get(ENV_VAR, "").strip()
    if url:
        return url
    directory = Path(platformdirs.user_data_dir("tpmap", appauthor=False))
    return f"sqlite:///{directory / 'tpmap.db'}"


def _is_memory(url: URL) -> bool:
    database = url.database or ""
    return database in ("", ":memory:") or url.query.get("mode") == "memory"


def _sqlite_engine(url: URL) -> Engine:
    memory = _is_memory(url)
    kwargs: dict[str, Any] = {}
    if memory:
        # One shared connection, or every pooled connection would see its own empty database.
        kwargs = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
    else:
        Path(url.database or "").expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy (not the sqlite3 module) emit BEGIN, so that writes can BEGIN IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if not memory:
                # WAL: readers never block the writer (the page reads while another tab writes).
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # A deferred transaction that reads and then writes fails at once with SQLITE_BUSY when
        # another writer got in between (busy_timeout does not apply); IMMEDIATE waits instead.
        write = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def make_engine(url: str | URL) -> Engine:
    """Create an engine for a tpmap database URL (SQLite or PostgreSQL).

    ``postgresql://`` without a driver means psycopg 3, the driver tpmap depends on.
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(parsed)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return create_engine(parsed, pool_pre_ping=True)
