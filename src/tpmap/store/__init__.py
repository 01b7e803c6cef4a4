"""The tpmap database: SQLite by default, PostgreSQL too, migrated on open.

>>> store = open_store("sqlite:///tmp/tpmap.db")  # doctest: +SKIP
>>> store.find_patients("P-00")  # doctest: +SKIP
"""

from __future__ import annotations

from tpmap.store._engine import default_database_url, make_engine
from tpmap.store._migrate import current_revision, head_revision
from tpmap.store._records import (
    AdverseEvent,
    Episode,
    Mark,
    MarkChange,
    NotFoundError,
    Outcome,
    Patient,
    PressurePainThreshold,
    SessionRecord,
)
from tpmap.store._store import Store, open_store

__all__ = [
    "AdverseEvent",
    "Episode",
    "Mark",
    "MarkChange",
    "NotFoundError",
    "Outcome",
    "Patient",
    "PressurePainThreshold",
    "SessionRecord",
    "Store",
    "current_revision",
    "default_database_url",
    "head_revision",
    "make_engine",
    "open_store",
]
