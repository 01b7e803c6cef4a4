"""The frames every analysis works on: vocabulary, the compact marks layout, dates.

The unit of analysis is the *patient episode*: the cohort frame has one row per episode, and
every mark carries the episode of its own session (``episode_id``), so that a mark is always
analysed with its own episode's condition, affected side and responder status.
"""

from __future__ import annotations

import datetime as _dt

import numpy as np
import pandas as pd

from tpmap import model

__all__ = [
    "AGE_BANDS",
    "DATASET_MARK_COLUMNS",
    "LAYERS",
    "MARK_COLUMNS",
    "RESPONDER_STATUSES",
    "SESSION_COLUMNS",
    "SIDES",
    "VIEWS",
    "compact_marks",
    "days_to_dates",
    "to_days",
]

VIEWS: tuple[str, ...] = model.VIEWS
LAYERS: tuple[str, ...] = model.LAYERS
SIDES: tuple[str, ...] = model.SIDES
VIEW_DTYPE = pd.CategoricalDtype(list(VIEWS))
LAYER_DTYPE = pd.CategoricalDtype(list(LAYERS))
SIDE_DTYPE = pd.CategoricalDtype(list(SIDES))

#: Columns of the compact marks frame, in order; optional ``clinician`` and ``episode_id``
#: columns come last.
MARK_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "session_id",
    "view",
    "layer",
    "x",
    "y",
    "muscle",
    "side",
    "technique",
    "ltr_grade",
    "tp_status",
    "session_date",
)
#: Columns of :attr:`Dataset.marks`: the compact layout, then ``clinician`` and ``episode_id``
#: (the episode of the mark's own session).
DATASET_MARK_COLUMNS: tuple[str, ...] = (*MARK_COLUMNS, "clinician", "episode_id")
#: Columns of :attr:`Dataset.sessions`: one row per session, with or without marks.
SESSION_COLUMNS: tuple[str, ...] = (
    "session_id",
    "episode_id",
    "patient_id",
    "session_date",
    "clinician",
)

#: Age bands in years, as ``(label, lowest age, highest age)``; ``"<18"`` catches minors.
AGE_BANDS: tuple[tuple[str, int, int], ...] = (
    ("<18", 0, 17),
    ("18-29", 18, 29),
    ("30-44", 30, 44),
    ("45-59", 45, 59),
    ("60-74", 60, 74),
    ("75+", 75, 200),
)

RESPONDER_STATUSES: tuple[str, ...] = ("responder", "non_responder", "unknown")
STATUS_DTYPE = pd.CategoricalDtype(list(RESPONDER_STATUSES))

EPOCH = np.datetime64("1970-01-01", "D")


def to_days(value: _dt.date | str) -> int:
    """Convert one date-like value to days since 1970-01-01 (the ``session_date`` unit).

    Examples
    --------
    >>> to_days("1970-01-02"), to_days(_dt.date(2024, 1, 1))
    (1, 19723)
    """
    return int((np.datetime64(pd.Timestamp(value).date(), "D") - EPOCH).astype(np.int64))


def days_series(values: pd.Series) -> np.ndarray:
    """Days since 1970 for a whole column (integers are taken as days already)."""
    if pd.api.types.is_integer_dtype(values.dtype):
        return values.to_numpy(dtype=np.int32)
    stamps = pd.to_datetime(values)
    if isinstance(stamps.dtype, pd.DatetimeTZDtype):
        stamps = stamps.dt.tz_localize(None)  # the local calendar date is the session date
    days = stamps.to_numpy(dtype="datetime64[D]")
    if np.isnat(days).any():
        raise ValueError("session_date has missing values")
    return (days - EPOCH).astype(np.int32)


def days_to_dates(days: pd.Series | np.ndarray) -> pd.Series:
    """Turn ``session_date`` day numbers back into ``datetime64`` for display.

    Examples
    --------
    >>> days_to_dates(np.array([0, 19723])).dt.strftime("%Y-%m-%d").tolist()
    ['1970-01-01', '2024-01-01']
    """
    arr = np.asarray(days, dtype=np.int64).astype("timedelta64[D]") + EPOCH
    index = days.index if isinstance(days, pd.Series) else None
    return pd.Series(arr.astype("datetime64[s]"), index=index, name="session_date")


def day_to_date(day: int) -> _dt.date:
    """One day number as a :class:`datetime.date`."""
    return (EPOCH + np.timedelta64(int(day), "D")).astype(_dt.date)


def compact_marks(df: pd.DataFrame) -> pd.DataFrame:
    """Coerce a marks frame to the compact analysis layout (at most 32 bytes a mark).

    Layout: ``patient_id``, ``session_id`` int32; ``view``, ``layer``, ``side`` categoricals
    with the fixed vocabularies; ``muscle``, ``technique``, ``ltr_grade``, ``tp_status``
    categoricals of the values present; ``x``, ``y`` float32 centimetres; ``session_date``
    int32 days since 1970-01-01 (:func:`days_to_dates` converts back). Optional
    ``clinician`` (categorical) and ``episode_id`` (int32, the episode of the mark's own
    session) are kept when present; other columns (notes, codes) are dropped. With fewer
    than 128 categories per column a mark takes 27 bytes, 32 with both optional columns.

    Examples
    --------
    >>> raw = pd.DataFrame({"patient_id": [1], "session_id": [7], "view": ["anterior"],
    ...     "layer": ["superficial"], "x": [-8.0], "y": [55.0], "muscle": ["vmo"],
    ...     "side": ["right"], "technique": ["static"], "ltr_grade": ["weak"],
    ...     "tp_status": ["active"], "session_date": ["2024-03-01"], "note": ["x"]})
    >>> m = compact_marks(raw)
    >>> m["session_date"].iat[0], "note" in m
    (np.int32(19783), False)
    """
    missing = [c for c in MARK_COLUMNS if c not in df.columns]
    if missing:
        raise KeyError(f"marks frame lacks columns: {missing}")
    out: dict[str, object] = {
        "patient_id": df["patient_id"].to_numpy(dtype=np.int32),
        "session_id": df["session_id"].to_numpy(dtype=np.int32),
    }
    for name, dtype in (("view", VIEW_DTYPE), ("layer", LAYER_DTYPE)):
        out[name] = fixed_category(df[name], dtype, name)
    out["x"] = df["x"].to_numpy(dtype=np.float32)
    out["y"] = df["y"].to_numpy(dtype=np.float32)
    out["muscle"] = open_category(df["muscle"])
    out["side"] = fixed_category(df["side"], SIDE_DTYPE, "side")
    for name in ("technique", "ltr_grade", "tp_status"):
        out[name] = open_category(df[name])
    out["session_date"] = days_series(df["session_date"])
    if "clinician" in df.columns:
        out["clinician"] = open_category(df["clinician"])
    if "episode_id" in df.columns:
        out["episode_id"] = df["episode_id"].to_numpy(dtype=np.int32)
    return pd.DataFrame(out)


def fixed_category(values: pd.Series, dtype: pd.CategoricalDtype, name: str) -> pd.Categorical:
    """``values`` as a categorical of a fixed vocabulary; unknown values are refused."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        present = set(values.cat.categories[np.unique(values.cat.codes[values.cat.codes >= 0])])
    else:
        present = set(pd.unique(values.dropna()))
    # A value outside the vocabulary would silently become NaN: refuse it instead.
    unknown = present - set(dtype.categories)
    if unknown:
        raise ValueError(f"unknown {name} values: {sorted(map(str, unknown))}")
    return pd.Categorical(values, dtype=dtype)


def open_category(values: pd.Series) -> pd.Categorical:
    """``values`` as a categorical of the values present."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        return values.cat.remove_unused_categories().array
    return pd.Categorical(values)


def member(values: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """``np.isin(values, allowed)`` for non-negative integer ids, by a lookup table.

    Ids (patients, episodes, sessions) are small dense integers, so a boolean table indexed
    by id answers each row with one gather instead of a hash lookup (10 times faster on
    10^7 marks).
    """
    values = np.asarray(values)
    allowed = np.asarray(allowed)
    if not len(values):
        return np.zeros(0, dtype=bool)
    if not len(allowed):
        return np.zeros(len(values), dtype=bool)
    top = int(max(values.max(), allowed.max()))
    low = int(min(values.min(), allowed.min()))
    if low < 0 or top > 64 * max(len(values), len(allowed)) + 1_000_000:
        return np.isin(values, allowed)
    table = np.zeros(top + 1, dtype=bool)
    table[allowed] = True
    return table[values]


def patient_count(frame: pd.DataFrame) -> int:
    """Distinct patients in a cohort or marks frame."""
    if frame.empty:
        return 0
    return int(pd.unique(frame["patient_id"].to_numpy()).size)


def stable_order(keys: np.ndarray) -> np.ndarray:
    """The stable sorting order of non-negative integer keys, by radix passes.

    numpy sorts 16-bit integers by radix sort (stable, linear time) but wider ones by merge
    sort, ten times slower on 10^7 keys; so sort by 15-bit digits, lowest first.
    """
    keys = np.asarray(keys)
    if not len(keys):
        return np.zeros(0, dtype=np.intp)
    low = int(keys.min())
    span = int(keys.max()) - low
    if low < 0 or span >= 1 << 45:
        return np.argsort(keys, kind="stable")
    shifted = keys.astype(np.int64) - low
    order = np.argsort((shifted & 0x7FFF).astype(np.int16), kind="stable")
    shift = 15
    while span >> shift:
        digit = ((shifted[order] >> shift) & 0x7FFF).astype(np.int16)
        order = order[np.argsort(digit, kind="stable")]
        shift += 15
    return order
