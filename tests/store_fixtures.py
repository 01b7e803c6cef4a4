"""Pytest fixtures for database tests: a Store on SQLite, and on PostgreSQL when configured.

``TPMAP_TEST_POSTGRES_URL`` adds a ``postgres`` variant of every store test. Each test then
gets a fresh schema of its own (dropped afterwards), so tests never see each other's rows.
When the variable is set and the server cannot be reached the tests fail: CI must not
silently skip the PostgreSQL half.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from tpmap.auth import Principal
from tpmap.store import Store

__all__ = ["POSTGRES_ENV", "clinician", "store", "store_url"]

POSTGRES_ENV = "TPMAP_TEST_POSTGRES_URL"


def _backends() -> list[object]:
    params: list[object] = ["sqlite"]
    if os.environ.get(POSTGRES_ENV, "").strip():
        params.append(pytest.param("postgres", marks=pytest.mark.postgres))
    return params


@pytest.fixture(params=_backends())
def store_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A database URL for one test: a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'tpmap.db'}"
        return
    base = make_url(os.environ[POSTGRES_ENV].strip())
    if base.drivername == "postgresql":
        base = base.set(drivername="postgresql+psycopg")
    schema = f"tpmap_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base)
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    except Exception as exc:
        admin.dispose()
        pytest.fail(f"{POSTGRES_ENV} is set but PostgreSQL is unusable: {exc}", pytrace=False)
    url = base.update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """An opened (migrated) Store on :func:`store_url`."""
    opened = Store(store_url)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def clinician(store: Store) -> Principal:
    """A signed-in clinician of the "Default clinic", where the unscoped store puts patients."""
    store.add_user(
        "tester",
        "a password for tests",
        roles=("clinician",),
        clinics=("Default clinic",),
        user="tests",
    )
    principal = store.principal("tester")
    assert principal is not None
    return principal
