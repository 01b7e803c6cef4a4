"""Responder status from a defined follow-up (baseline before treatment, follow-up in a window).

A patient episode's baseline is the instrument's score taken before the first session
(the latest one on or before its date); the follow-up is the latest score in a window after
the first session (4 to 12 weeks by default). Scores come from outcome measures, or for the
NPRS from the pain score a session records *before* needling; the NPRS recorded right after
needling says how the session went, not how the patient is, and is never used.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from tpmap import model
from tpmap.research._frames import STATUS_DTYPE

__all__ = [
    "INSTRUMENTS",
    "OUTCOME_SOURCES",
    "UNKNOWN_REASONS",
    "ResponderRule",
    "attach_responders",
    "responders",
]


#: Direction and MCID per instrument, derived from :data:`tpmap.model.OUTCOME_INSTRUMENTS`
#: (ANATOMY.md section 3; NPRS 2 is for chronic musculoskeletal pain, 1.16 has been reported
#: in patellofemoral pain: pass ``mcid=`` to use it).
INSTRUMENTS: dict[str, model.Instrument] = model.OUTCOME_INSTRUMENTS

#: Where a score in the outcomes frame comes from. ``"session_before"`` is a session's NPRS
#: taken before needling (a usable score); the NPRS after needling is never loaded.
OUTCOME_SOURCES: tuple[str, ...] = ("outcome_measures", "session_before")
#: Why a status is unknown.
UNKNOWN_REASONS: tuple[str, ...] = ("no_sessions", "no_baseline", "no_follow_up", "zero_baseline")

Threshold = Literal["mcid", "relative"]


@dataclass(frozen=True)
class ResponderRule:
    """How a responder is defined.

    Parameters
    ----------
    instrument
        An instrument of :data:`INSTRUMENTS`.
    window
        Follow-up window in days after the first session, inclusive (default 28 to 84:
        4 to 12 weeks).
    threshold
        ``"mcid"``: the improvement reaches the minimal clinically important difference
        (``mcid``, default from :data:`INSTRUMENTS`). ``"relative"``: the improvement is at
        least ``relative`` (default 30 %) of the baseline score.
    mcid, relative
        The thresholds.

    Examples
    --------
    >>> ResponderRule("nprs", threshold="relative").describe()
    'NPRS: improved by at least 30 % of the baseline, 4 to 12 weeks after the first session'
    """

    instrument: str = "nprs"
    window: tuple[int, int] = (28, 84)
    threshold: Threshold = "mcid"
    mcid: float | None = None
    relative: float = 0.30

    def __post_init__(self) -> None:
        if self.instrument not in INSTRUMENTS:
            raise ValueError(
                f"unknown instrument {self.instrument!r}; known: {sorted(INSTRUMENTS)}"
            )
        low, high = (int(v) for v in self.window)
        if not 0 < low <= high:
            raise ValueError("the follow-up window must be 0 < first day <= last day")
        object.__setattr__(self, "window", (low, high))
        if self.threshold not in ("mcid", "relative"):
            raise ValueError("threshold must be 'mcid' or 'relative'")
        if not 0 < self.relative <= 1:
            raise ValueError("relative must be a share between 0 and 1")

    @property
    def mcid_value(self) -> float:
        """The MCID in use."""
        return float(INSTRUMENTS[self.instrument].mcid) if self.mcid is None else float(self.mcid)

    def describe(self) -> str:
        """The rule in words, for legends and exports."""
        label = model.OUTCOME_INSTRUMENTS[self.instrument].label
        if self.threshold == "mcid":
            what = f"improved by at least the MCID ({self.mcid_value:g})"
        else:
            what = f"improved by at least {100 * self.relative:g} % of the baseline"
        low, high = self.window
        span = (
            f"{low // 7} to {high // 7} weeks"
            if low % 7 == 0 and high % 7 == 0
            else f"{low} to {high} days"
        )
        return f"{label}: {what}, {span} after the first session"


def responders(
    outcomes: pd.DataFrame,
    episodes: pd.DataFrame | None = None,
    *,
    rule: ResponderRule | None = None,
    instrument: str | None = None,
    mcid: float | None = None,
) -> pd.DataFrame:
    """Responder status per patient episode under ``rule``.

    Parameters
    ----------
    outcomes
        Scores: ``patient_id``, ``episode_id``, ``instrument``, ``score``, ``date`` and
        optionally ``source`` (:data:`OUTCOME_SOURCES`; rows from outcome measures win over
        a session's pre-needling NPRS on the same question).
    episodes
        One row per episode with ``patient_id``, ``episode_id`` and ``first_session`` (date
        of the episode's first session, missing when it has none). Every episode gets a
        row in the result, with or without scores. Without it, each episode with scores is
        measured from its earliest score, as if that were the first session.
    rule
        The definition; ``instrument`` and ``mcid`` are shortcuts for
        ``ResponderRule(instrument, mcid=mcid)``.

    Returns
    -------
    pandas.DataFrame
        ``patient_id``, ``episode_id``, ``baseline``, ``baseline_date``, ``follow_up``,
        ``follow_up_date``, ``improvement`` (in the instrument's good direction),
        ``status`` (``"responder"``, ``"non_responder"`` or ``"unknown"``) and ``reason``
        (why unknown: :data:`UNKNOWN_REASONS`). Missing follow-up is never counted as a
        non-response. ``attrs["rule"]`` holds the rule.

    Examples
    --------
    >>> o = pd.DataFrame({"patient_id": [1, 1, 2], "episode_id": [1, 1, 2],
    ...     "instrument": "nprs", "score": [7, 4, 6],
    ...     "date": pd.to_datetime(["2024-01-01", "2024-02-15", "2024-01-01"])})
    >>> responders(o, instrument="nprs")["status"].tolist()
    ['responder', 'unknown']
    """
    if rule is None:
        rule = ResponderRule(instrument or "nprs", mcid=mcid)
    elif instrument is not None or mcid is not None:
        raise TypeError("give either rule= or instrument=/mcid=, not both")
    info = INSTRUMENTS[rule.instrument]
    rows = outcomes.loc[(outcomes["instrument"] == rule.instrument).to_numpy()]
    rows = rows.dropna(subset=["score", "date"])
    source = (
        rows["source"].astype(str).to_numpy()
        if "source" in rows.columns
        else np.full(len(rows), "outcome_measures")
    )
    scores = pd.DataFrame(
        {
            "episode_id": rows["episode_id"].to_numpy(),
            "score": rows["score"].to_numpy(dtype=float),
            "date": pd.to_datetime(rows["date"]).to_numpy(dtype="datetime64[s]"),
            # Outcome measures first when two sources answer the same question.
            "rank": np.where(source == "outcome_measures", 0, 1),
        }
    )

    if episodes is None:
        first = scores.groupby("episode_id")["date"].min()
        patient = rows.groupby("episode_id")["patient_id"].first()
        frame = pd.DataFrame(
            {
                "patient_id": patient.reindex(first.index).to_numpy(),
                "episode_id": first.index.to_numpy(),
                "first_session": first.to_numpy(),
            }
        )
    else:
        frame = episodes[["patient_id", "episode_id", "first_session"]].drop_duplicates(
            "episode_id"
        )
    frame = frame.reset_index(drop=True)
    reference = pd.to_datetime(frame["first_session"]).to_numpy(dtype="datetime64[s]")
    ref_by_episode = pd.Series(reference, index=frame["episode_id"].to_numpy())
    scores["ref"] = ref_by_episode.reindex(scores["episode_id"]).to_numpy()
    scores = scores.loc[~pd.isna(scores["ref"]).to_numpy()]
    delta = (scores["date"] - scores["ref"]).dt.days.to_numpy()

    def pick(mask: np.ndarray) -> pd.DataFrame:
        # Outcome measures (rank 0) win over a session's NPRS (rank 1); within one source the
        # latest score: the closest to the first session for the baseline, the longest
        # follow-up inside the window.
        sub = scores.loc[mask].sort_values(
            ["episode_id", "rank", "date"], ascending=[True, False, True], kind="stable"
        )
        return sub.drop_duplicates("episode_id", keep="last").set_index("episode_id")[
            ["score", "date"]
        ]

    low, high = rule.window
    base = pick(delta <= 0)
    follow = pick((delta >= low) & (delta <= high))
    ids = frame["episode_id"].to_numpy()
    out = frame[["patient_id", "episode_id"]].copy()
    out["baseline"] = base["score"].reindex(ids).to_numpy(dtype=float)
    out["baseline_date"] = base["date"].reindex(ids).to_numpy()
    out["follow_up"] = follow["score"].reindex(ids).to_numpy(dtype=float)
    out["follow_up_date"] = follow["date"].reindex(ids).to_numpy()
    change = out["follow_up"] - out["baseline"]
    improvement = -change if info.direction is model.Direction.LOWER_IS_BETTER else change
    out["improvement"] = improvement

    no_sessions = pd.isna(reference)
    no_base = ~no_sessions & np.isnan(out["baseline"].to_numpy())
    no_follow = ~no_sessions & ~no_base & np.isnan(out["follow_up"].to_numpy())
    known = ~(no_sessions | no_base | no_follow)
    if rule.threshold == "mcid":
        # The tolerance keeps 12.5 computed as 12.4999999 from summed item scores a responder.
        hit = improvement.to_numpy() >= rule.mcid_value - 1e-9
        zero = np.zeros(len(out), dtype=bool)
    else:
        baseline = out["baseline"].to_numpy()
        zero = known & (baseline == 0)  # no relative change from nothing
        with np.errstate(divide="ignore", invalid="ignore"):
            hit = improvement.to_numpy() / np.abs(baseline) >= rule.relative - 1e-9
        known &= ~zero
    reason = np.full(len(out), "", dtype=object)
    reason[no_sessions] = "no_sessions"
    reason[no_base] = "no_baseline"
    reason[no_follow] = "no_follow_up"
    reason[zero] = "zero_baseline"
    status = np.where(~known, "unknown", np.where(hit, "responder", "non_responder"))
    out.loc[~known, "improvement"] = np.nan
    out["status"] = pd.Categorical(status, dtype=STATUS_DTYPE)
    # numpy's stubs have no None branch for where(); at run time it makes an object array.
    reasons = np.where(known, None, reason)  # type: ignore[call-overload]
    out["reason"] = pd.Categorical(reasons, categories=list(UNKNOWN_REASONS))
    out.attrs.update(rule=rule, instrument=rule.instrument, mcid=rule.mcid_value)
    return out


def attach_responders(cohort: pd.DataFrame, statuses: pd.DataFrame) -> pd.DataFrame:
    """Add a ``responder`` column to the cohort from :func:`responders` output.

    With an episode cohort (an ``episode_id`` column) every episode takes its own status.
    A cohort of one row per patient (no ``episode_id``) takes, per patient, the status of
    the latest episode (by follow-up date) whose status is known. Anything without a known
    status is ``"unknown"``.

    Examples
    --------
    >>> cohort = attach_responders(cohort, responders(outcomes, episodes))  # doctest: +SKIP
    """
    out = cohort.copy()
    status: np.ndarray | list[str]
    if "episode_id" in cohort.columns:
        by_episode = pd.Series(
            statuses["status"].astype(str).to_numpy(), index=statuses["episode_id"].to_numpy()
        )
        values = by_episode.reindex(cohort["episode_id"].to_numpy()).to_numpy()
        status = np.where(pd.isna(values), "unknown", values)
    else:
        known = statuses.loc[(statuses["status"] != "unknown").to_numpy()]
        latest = known.sort_values("follow_up_date", kind="stable").drop_duplicates(
            "patient_id", keep="last"
        )
        by_patient = dict(zip(latest["patient_id"], latest["status"].astype(str), strict=True))
        status = [by_patient.get(pid, "unknown") for pid in cohort["patient_id"]]
    out["responder"] = pd.Categorical(status, dtype=STATUS_DTYPE)
    return out


def status_columns(
    outcomes: pd.DataFrame, episodes: pd.DataFrame, instruments: Iterable[str]
) -> dict[str, pd.Categorical[str]]:
    """``responder_<instrument>`` columns (default rule) aligned with ``episodes``."""
    out: dict[str, pd.Categorical[str]] = {}
    key = episodes["episode_id"].to_numpy()
    for instrument in instruments:
        result = responders(outcomes, episodes, rule=ResponderRule(instrument))
        values = (
            pd.Series(result["status"].astype(str).to_numpy(), index=result["episode_id"])
            .reindex(key)
            .to_numpy()
        )
        out[f"responder_{instrument}"] = pd.Categorical(
            np.where(pd.isna(values), "unknown", values), dtype=STATUS_DTYPE
        )
    return out
