"""Research exports: an allow-list of columns, pseudonyms, no exact dates, no hidden spots.

An export of marks is built column by column from :data:`EXPORT_COLUMNS`; nothing else can
leave, whatever the frames it is built from carry (notes, codes, names, new columns added
to the database later). Patients, episodes and sessions become per-export salted hashes;
dates become days since the episode's start (or the month); clinicians a per-export hash
or nothing. Marks in a muscle hidden by the disclosure rules are left out; marks in a spot
hidden on the density map keep their muscle but lose their coordinates.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tpmap.research._density import GridSpec, _cells_into, _in_bounds, patients_within
from tpmap.research._filters import Filters, age_band
from tpmap.research._frames import EPOCH

__all__ = [
    "EXPORT_COLUMNS",
    "Export",
    "deidentify",
    "export_marks",
    "export_record",
    "withheld_positions",
]

#: The only columns a marks export can contain, in order. ``days_since_episode_start`` or
#: ``month`` carries the date; ``clinician`` is a per-export pseudonym or absent.
EXPORT_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "episode_id",
    "session_id",
    "condition",
    "affected_side",
    "sex",
    "age_band",
    "responder",
    "days_since_episode_start",
    "month",
    "clinician",
    "view",
    "layer",
    "muscle",
    "side",
    "x",
    "y",
    "technique",
    "ltr_grade",
    "tp_status",
)
_HASHED = ("patient_id", "episode_id", "session_id", "clinician")


def _hash(key: bytes, column: str, value: object) -> str:
    person = column.encode()[:16]
    data = str(value).encode()
    return hashlib.blake2b(data, key=key, digest_size=8, person=person).hexdigest()


def _pseudonyms(values: pd.Series, key: bytes, column: str) -> pd.Series:
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    # One hash per distinct value; ``person`` separates the id spaces, so patient 7 and
    # session 7 do not share a pseudonym.
    hashed = np.array([_hash(key, column, v) for v in uniques] + [None], dtype=object)
    return pd.Series(pd.array(hashed[codes], dtype="string"), index=values.index)


def deidentify(frame: pd.DataFrame, *, salt: bytes | None = None) -> pd.DataFrame:
    """Copy of ``frame`` keeping only :data:`EXPORT_COLUMNS`, ids replaced by hashes.

    ``patient_id``, ``episode_id``, ``session_id`` and ``clinician`` become 16-hex-digit
    keyed BLAKE2b hashes. The key is ``salt``, by default 16 fresh random bytes from
    :mod:`secrets` per call and never returned, so pseudonyms differ between exports and
    cannot be joined back to the database. Pass one ``salt`` to keep ids consistent across
    the files of *one* export, then discard it. Every other column is dropped: this is an
    allow-list, so a column nobody thought of never leaves.

    Examples
    --------
    >>> out = deidentify(pd.DataFrame({"patient_id": [3, 3], "note": ["a", "b"]}))
    >>> list(out.columns), out["patient_id"].nunique()
    (['patient_id'], 1)
    """
    key = secrets.token_bytes(16) if salt is None else bytes(salt)
    if not 0 < len(key) <= hashlib.blake2b.MAX_KEY_SIZE:
        raise ValueError("salt must be 1 to 64 bytes")
    out = pd.DataFrame(index=frame.index)
    for column in EXPORT_COLUMNS:
        if column not in frame.columns:
            continue
        out[column] = (
            _pseudonyms(frame[column], key, column) if column in _HASHED else frame[column]
        )
    return out


def withheld_positions(
    marks: pd.DataFrame,
    k: int,
    *,
    grids: Mapping[str, GridSpec] | None = None,
    cell: float = 0.5,
    radius: float = 1.5,
) -> np.ndarray:
    """True for each mark whose spot the density map hides: fewer than ``k`` patients'
    marks (of the same view and layer) within ``radius`` cm.

    ``grids`` gives the page's grid per view (so that the answer matches the map drawn);
    without it, a grid aligned to whole cells around the marks is used.
    """
    hidden = np.zeros(len(marks), dtype=bool)
    if marks.empty:
        return hidden
    views = marks["view"].astype(str).to_numpy()
    layers = marks["layer"].astype(str).to_numpy()
    x_all = marks["x"].to_numpy()
    y_all = marks["y"].to_numpy()
    patient = marks["patient_id"].to_numpy()
    for view in pd.unique(views):
        for layer in pd.unique(layers):
            rows = np.flatnonzero((views == view) & (layers == layer))
            if not len(rows):
                continue
            x, y = x_all[rows], y_all[rows]
            spec = (grids or {}).get(view) or _grid_around(x, y, cell)
            x, y, inside = _in_bounds(x, y, spec)
            if inside is not None:  # off the grid: no spot on the map, so no position
                hidden[rows[~inside]] = True
                rows = rows[inside]
            cells = np.empty(len(rows), dtype=np.intp)
            _cells_into(x, y, spec, cells)
            codes, uniques = pd.factorize(patient[rows], sort=True)
            order = np.argsort(codes, kind="stable")
            counts = patients_within(
                codes[order].astype(np.int64), cells[order], len(uniques), spec.shape,
                radius / spec.cell,
            )  # fmt: skip
            hidden[rows] = counts.ravel()[cells] < k
    return hidden


def _grid_around(x: np.ndarray, y: np.ndarray, cell: float) -> GridSpec:
    finite = np.isfinite(x) & np.isfinite(y)
    if not finite.any():
        return GridSpec(0.0, 0.0, cell, 1, 1)
    x0 = np.floor(float(x[finite].min()) / cell) * cell - cell
    y0 = np.floor(float(y[finite].min()) / cell) * cell - cell
    x1 = np.ceil(float(x[finite].max()) / cell) * cell + cell
    y1 = np.ceil(float(y[finite].max()) / cell) * cell + cell
    return GridSpec.from_bounds((x0, y0, x1, y1), cell)


@dataclass(frozen=True)
class Export:
    """A research export: the frame and its record for the audit trail."""

    frame: pd.DataFrame
    record: dict[str, Any]


def export_marks(
    cohort: pd.DataFrame,
    marks: pd.DataFrame,
    *,
    filters: Filters,
    k: int,
    hidden_cells: Iterable[tuple[str, str]] = (),
    dates: str = "days_since_start",
    clinicians: str = "hash",
    responder: pd.Series | None = None,
    grids: Mapping[str, GridSpec] | None = None,
    radius: float = 1.5,
    fold: bool = False,
    salt: bytes | None = None,
    file_format: str = "csv",
) -> Export:
    """The filtered marks as a research export, and the export's record.

    Parameters
    ----------
    cohort, marks
        The filtered (and possibly folded) selection, as the page shows it.
    filters, k, fold
        What produced it (for the record).
    hidden_cells
        ``(muscle, side)`` cells the disclosure checks hide: their marks are left out, as
        are those of every cell with fewer than ``k`` patients.
    dates
        ``"days_since_start"`` (days since the episode's start) or ``"month"``.
    clinicians
        ``"hash"`` (a per-export pseudonym) or ``"drop"``.
    responder
        Responder status per cohort row (the page's choice of instrument and rule).
    grids, radius
        The density map's grid per view and radius: marks in a spot it hides keep their
        muscle but lose ``x`` and ``y``.
    salt
        Key of the per-export pseudonyms (fresh by default).

    Returns
    -------
    Export
        ``frame`` with :data:`EXPORT_COLUMNS` only, and ``record`` (:func:`export_record`).
    """
    key_col = (
        "episode_id" if "episode_id" in cohort.columns and "episode_id" in marks else ("patient_id")
    )
    per_cell = marks.groupby(["muscle", "side"], observed=True)["patient_id"].transform("nunique")
    hidden = set(hidden_cells)
    muscle = marks["muscle"].astype(str).to_numpy()
    side = marks["side"].astype(str).to_numpy()
    in_hidden = np.array([(m, s) in hidden for m, s in zip(muscle, side, strict=True)], bool)
    keep = (per_cell.to_numpy() >= k) & ~in_hidden
    kept = marks.loc[keep]
    withheld = withheld_positions(kept, k, grids=grids, radius=radius)

    episodes = cohort.drop_duplicates(key_col).set_index(key_col)
    rows = episodes.reindex(kept[key_col].to_numpy())
    frame = pd.DataFrame(index=kept.index)
    frame["patient_id"] = kept["patient_id"]
    if "episode_id" in kept.columns:
        frame["episode_id"] = kept["episode_id"]
    frame["session_id"] = kept["session_id"]
    for column in ("condition", "affected_side", "sex"):
        if column in rows.columns:
            frame[column] = rows[column].astype(str).to_numpy()
    if "birth_year" in rows.columns and "start_date" in rows.columns:
        year = pd.to_datetime(rows["start_date"]).dt.year.to_numpy(dtype=float)
        frame["age_band"] = age_band(rows["birth_year"].to_numpy(dtype=float), year)
    if responder is not None:
        status = pd.Series(responder.to_numpy(), index=cohort[key_col].to_numpy())
        status = status[~status.index.duplicated()]
        frame["responder"] = status.reindex(kept[key_col].to_numpy()).astype(str).to_numpy()
    session_day = kept["session_date"].to_numpy().astype(np.int64)
    if dates == "month":
        stamps = (session_day.astype("timedelta64[D]") + EPOCH).astype("datetime64[M]")
        frame["month"] = stamps.astype(str)
    elif dates == "days_since_start":
        if "start_date" in rows.columns:
            start = pd.to_datetime(rows["start_date"]).to_numpy(dtype="datetime64[D]")
            start_day = (start - EPOCH).astype(np.int64)
            frame["days_since_episode_start"] = session_day - start_day
        else:
            first = pd.Series(session_day).groupby(kept[key_col].to_numpy()).transform("min")
            frame["days_since_episode_start"] = session_day - first.to_numpy()
    else:
        raise ValueError("dates must be 'days_since_start' or 'month'")
    if clinicians == "hash" and "clinician" in kept.columns:
        frame["clinician"] = kept["clinician"]
    elif clinicians not in ("hash", "drop"):
        raise ValueError("clinicians must be 'hash' or 'drop'")
    for column in ("view", "layer", "muscle", "side"):
        frame[column] = kept[column].astype(str).to_numpy()
    x = kept["x"].to_numpy(dtype=float).copy()
    y = kept["y"].to_numpy(dtype=float).copy()
    x[withheld] = np.nan
    y[withheld] = np.nan
    frame["x"], frame["y"] = x, y
    for column in ("technique", "ltr_grade", "tp_status"):
        if column in kept.columns:
            frame[column] = kept[column].astype("string").to_numpy()
    out = deidentify(frame, salt=salt).reset_index(drop=True)
    record = export_record(
        "marks",
        filters=filters,
        k=k,
        rows=len(out),
        columns=list(out.columns),
        file_format=file_format,
        fold=fold,
        dropped_marks=int((~keep).sum()),
        withheld_positions=int(withheld.sum()),
    )
    return Export(out, record)


def export_record(
    kind: str,
    *,
    filters: Filters,
    k: int,
    rows: int,
    columns: list[str],
    file_format: str,
    **details: Any,
) -> dict[str, Any]:
    """The audit-trail record of one export: what, filtered how, with which k, how big.

    Examples
    --------
    >>> r = export_record("muscle_table", filters=Filters(sexes=["female"]), k=5, rows=3,
    ...                   columns=["muscle", "pct"], file_format="csv")
    >>> r["filters"], r["k"], r["rows"]
    ({'sexes': ['female']}, 5, 3)
    """
    return {
        "kind": kind,
        "format": file_format,
        "filters": filters.describe(),
        "k": int(k),
        "rows": int(rows),
        "columns": list(columns),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **details,
    }
