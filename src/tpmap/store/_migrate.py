"""Apply the Alembic migrations shipped inside the package."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

__all__ = [
    "MIGRATIONS_DIR",
    "alembic_config",
    "current_revision",
    "downgrade",
    "head_revision",
    "upgrade",
]

MIGRATIONS_DIR = Path(__file__).resolve().with_name("migrations")
# Any constant: serialises concurrent first opens of one PostgreSQL database.
_PG_LOCK_KEY = 0x7470_6D61


def alembic_config() -> Config:
    """An Alembic config pointing into the package (no alembic.ini needed)."""
    config = Config()
    # configparser interpolation would treat '%' in a path as a directive.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    return config


def head_revision() -> str | None:
    """The newest migration shipped with this version of tpmap."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The migration the database is at (None for an empty database)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@contextmanager
def _migrating(engine: Engine) -> Iterator[Connection]:
    """One transaction for migrations; on SQLite with foreign keys checked at the end only.

    SQLite alters a constraint by recreating the table (Alembic's batch mode: copy, drop,
    rename). Dropping a table that others reference (``marks`` by ``mark_changes``) fails
    while foreign keys are enforced, and SQLite changes that setting only outside a
    transaction: so it is off during the migration, every reference is checked before the
    commit (SQLite's documented procedure for table changes), and it is on again afterwards.
    """
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        raw = conn.connection.dbapi_connection if sqlite else None
        if raw is not None:
            raw.execute("PRAGMA foreign_keys=OFF")  # autocommit mode: outside a transaction
        try:
            with conn.begin():
                if conn.dialect.name == "postgresql":
                    conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK_KEY})")
                yield conn
                if sqlite:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
                    if broken:
                        raise RuntimeError(f"migration left broken references: {broken[:5]}")
        finally:
            if raw is not None:
                raw.execute("PRAGMA foreign_keys=ON")


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database to the newest schema (or ``revision``); a no-op when it is there.

    ``engine`` should be a write-marked engine so that SQLite takes its write lock first and a
    second process opening the same file waits rather than racing the migration.
    """
    config = alembic_config()
    with _migrating(engine) as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Take the database back to ``revision`` (for tests and for undoing an upgrade)."""
    config = alembic_config()
    with _migrating(engine) as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, revision)
