"""The audit trail: append (in the caller's transaction), read, and verify the hash chain.

Each row's ``hash`` is HMAC-SHA256, keyed with a key derived from the server secret, over
the previous row's hash and this row's stored values. The single ``audit_chain`` row holds
the head (last ``seq`` and ``hash``, authenticated by ``head_mac``). Appends lock that row
(``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already serialises
writers), so several processes writing to one database keep one chain.

Someone who can write to the database but does not hold the secret cannot change, insert
or remove a row (or cut rows off the end) without :func:`verify` naming the first row where
the chain breaks. Restoring an older copy of the whole database is not detected.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, insert, select, update
from sqlalchemy.engine import Connection

from tpmap.store._common import RowLike
from tpmap.store.schema import AuditChainRow, AuditRow, utcnow

__all__ = [
    "GENESIS",
    "AuditEntry",
    "AuditKeyError",
    "AuditReport",
    "append",
    "audit_json",
    "entry_from_row",
    "key_check",
    "verify_rows",
]

_log_table: Table = AuditRow.__table__
_chain: Table = AuditChainRow.__table__

GENESIS = "0" * 64
_CHUNK = 5_000


class AuditKeyError(RuntimeError):
    """The audit trail was written with another secret than the one given."""

    def __init__(self) -> None:
        super().__init__(
            "This database's audit trail was started with a different secret: run tpmap with "
            "the server's secret (TPMAP_SECRET or --secret-file) so that the trail stays "
            "verifiable."
        )


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One row of the audit trail, as ``tpmap audit`` shows it."""

    seq: int
    at: dt.datetime
    actor: str
    action: str
    entity: str
    entity_id: int | None
    target: str | None
    patient_id: int | None
    clinic_id: int | None
    address: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class AuditReport:
    """The outcome of :func:`verify_rows`: ``ok``, rows checked, and the first break."""

    ok: bool
    rows: int
    problem: str | None = None
    seq: int | None = None


def _default(value: object) -> object:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def audit_json(values: Mapping[str, Any] | None) -> str | None:
    """Values as stored in ``before``/``after``: JSON, keys sorted, dates as ISO text."""
    if values is None:
        return None
    return json.dumps(dict(values), sort_keys=True, default=_default, ensure_ascii=False)


def key_check(key: bytes) -> str:
    """A fingerprint of the audit key (reveals nothing about the key)."""
    return hmac.new(key, b"tpmap audit key check", hashlib.sha256).hexdigest()


def _row_hash(key: bytes, previous: str, row: Mapping[str, Any]) -> str:
    at: dt.datetime = row["at"]
    fields = [
        row["seq"],
        at.astimezone(dt.UTC).isoformat(),
        row["actor"],
        row["action"],
        row["entity"],
        row["entity_id"],
        row["target"],
        row["patient_id"],
        row["clinic_id"],
        row["address"],
        row["before"],
        row["after"],
    ]
    message = previous + "|" + json.dumps(fields, ensure_ascii=True, separators=(",", ":"))
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def _head_mac(key: bytes, seq: int, digest: str) -> str:
    return hmac.new(key, f"head|{seq}|{digest}".encode(), hashlib.sha256).hexdigest()


def append(
    conn: Connection,
    key: bytes,
    *,
    actor: str,
    action: str,
    entity: str,
    entity_id: int | None = None,
    target: str | None = None,
    patient_id: int | None = None,
    clinic_id: int | None = None,
    address: str | None = None,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
) -> int:
    """Append one row in ``conn``'s (write) transaction; returns its ``seq``."""
    head = conn.execute(select(_chain).where(_chain.c.id == 1).with_for_update()).mappings().one()
    check = key_check(key)
    if head["key_check"] is not None and head["key_check"] != check:
        raise AuditKeyError()
    row = {
        "seq": head["seq"] + 1,
        "at": utcnow(),
        "actor": actor[:100],
        "action": action,
        "entity": entity,
        "entity_id": entity_id,
        "target": None if target is None else target[:100],
        "patient_id": patient_id,
        "clinic_id": clinic_id,
        "address": None if address is None else address[:64],
        "before": audit_json(before),
        "after": audit_json(after),
    }
    digest = _row_hash(key, head["hash"], row)
    conn.execute(insert(_log_table).values(**row, hash=digest))
    conn.execute(
        update(_chain)
        .where(_chain.c.id == 1)
        .values(
            seq=row["seq"],
            hash=digest,
            head_mac=_head_mac(key, row["seq"], digest),
            key_check=check,
        )
    )
    return row["seq"]


def entry_from_row(row: RowLike) -> AuditEntry:
    """An :class:`AuditEntry` from a row of ``audit_log``."""
    return AuditEntry(
        seq=row["seq"],
        at=row["at"],
        actor=row["actor"],
        action=row["action"],
        entity=row["entity"],
        entity_id=row["entity_id"],
        target=row["target"],
        patient_id=row["patient_id"],
        clinic_id=row["clinic_id"],
        address=row["address"],
        before=None if row["before"] is None else json.loads(row["before"]),
        after=None if row["after"] is None else json.loads(row["after"]),
    )


def _describe(row: RowLike) -> str:
    what = f"{row['action']} {row['entity']}"
    if row["entity_id"] is not None:
        what += f" {row['entity_id']}"
    at = row["at"].astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{at}, {row['actor']!r}: {what}"


def _rows(conn: Connection) -> Iterator[RowLike]:
    last = 0
    while True:
        chunk = (
            conn.execute(
                select(_log_table)
                .where(_log_table.c.seq > last)
                .order_by(_log_table.c.seq)
                .limit(_CHUNK)
            )
            .mappings()
            .all()
        )
        if not chunk:
            return
        yield from chunk
        last = chunk[-1]["seq"]


def verify_rows(conn: Connection, key: bytes) -> AuditReport:
    """Walk the whole trail in order and report the first row where the chain breaks."""
    head = conn.execute(select(_chain).where(_chain.c.id == 1)).mappings().first()
    if head is None:
        return AuditReport(False, 0, "The audit chain's head row is missing.", None)
    if head["key_check"] is not None and head["key_check"] != key_check(key):
        return AuditReport(
            False,
            0,
            "The secret given is not the one this audit trail was written with: "
            "use the server's secret (TPMAP_SECRET or --secret-file).",
            None,
        )
    previous, expected, count = GENESIS, 1, 0
    for row in _rows(conn):
        seq = row["seq"]
        if seq != expected:
            missing = f"row {expected}" if seq == expected + 1 else f"rows {expected}-{seq - 1}"
            return AuditReport(
                False,
                count,
                f"Audit {missing} missing: the trail jumps from row {expected - 1} to row "
                f"{seq} ({_describe(row)}).",
                expected,
            )
        if not hmac.compare_digest(_row_hash(key, previous, row), row["hash"]):
            return AuditReport(
                False,
                count,
                f"Audit row {seq} ({_describe(row)}) does not match its hash: it was changed "
                "after it was written (or a row before it was replaced).",
                seq,
            )
        previous, expected, count = row["hash"], seq + 1, count + 1
    if head["seq"] != count or head["hash"] != previous:
        if head["seq"] > count:
            return AuditReport(
                False,
                count,
                f"Audit rows {count + 1}-{head['seq']} are missing: the trail ends at row "
                f"{count} but {head['seq']} rows were written.",
                count + 1,
            )
        return AuditReport(
            False, count, "The audit chain's head does not match the last row.", count
        )
    if count and (
        head["head_mac"] is None
        or not hmac.compare_digest(_head_mac(key, head["seq"], head["hash"]), head["head_mac"])
    ):
        return AuditReport(
            False,
            count,
            "The audit chain's head was changed: rows at the end may have been removed.",
            count,
        )
    return AuditReport(True, count)
