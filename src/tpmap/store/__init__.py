"""The tpmap database: SQLite by default, PostgreSQL too, migrated on open.

>>> store = open_store("sqlite:///tmp/tpmap.db")  # doctest: +SKIP
>>> store.find_patients("P-00")  # doctest: +SKIP
>>> store.scoped(principal).find_patients("P-00")  # one clinician's clinics  # doctest: +SKIP
"""

from __future__ import annotations

from tpmap.auth import AccessDenied, Principal
from tpmap.store._accounts import SIGN_IN_LIMIT, SignIn
from tpmap.store._audit import AuditEntry, AuditKeyError, AuditReport
from tpmap.store._engine import default_database_url, make_engine
from tpmap.store._migrate import current_revision, head_revision
from tpmap.store._records import (
    AdverseEvent,
    Clinic,
    Episode,
    Mark,
    MarkChange,
    NotFoundError,
    Outcome,
    Patient,
    PressurePainThreshold,
    SessionRecord,
    SignInError,
    UndoResult,
    UserAccount,
)
from tpmap.store._scoped import NOT_FOUND, ScopedStore
from tpmap.store._store import Store, open_store

__all__ = [
    "NOT_FOUND",
    "SIGN_IN_LIMIT",
    "AccessDenied",
    "AdverseEvent",
    "AuditEntry",
    "AuditKeyError",
    "AuditReport",
    "Clinic",
    "Episode",
    "Mark",
    "MarkChange",
    "NotFoundError",
    "Outcome",
    "Patient",
    "PressurePainThreshold",
    "Principal",
    "ScopedStore",
    "SessionRecord",
    "SignIn",
    "SignInError",
    "Store",
    "UndoResult",
    "UserAccount",
    "current_revision",
    "default_database_url",
    "head_revision",
    "make_engine",
    "open_store",
]
