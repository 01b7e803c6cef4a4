"""How a patient is doing across an episode: pain by session and outcome scores over time.

Pure data for the clinician page's Progress view (and for notebooks). For each instrument
the baseline is the first score of the episode, and the band a score has to leave to count
as a clinically important change runs from the baseline by one minimal clinically
important difference (MCID, :data:`tpmap.model.OUTCOME_INSTRUMENTS`) in the direction of
improvement. For NPRS the baseline is the pain before the first session.

Examples
--------
>>> import datetime as dt
>>> from types import SimpleNamespace as S
>>> sessions = [S(id=1, date=dt.date(2026, 1, 5), nprs_before=7, nprs_after=5),
...             S(id=2, date=dt.date(2026, 1, 12), nprs_before=4, nprs_after=3)]
>>> p = episode_progress(sessions, [])
>>> nprs = p.instruments[0]
>>> nprs.baseline, nprs.band, nprs.improved
(7.0, (5.0, 7.0), True)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tpmap import model

__all__ = ["EpisodeProgress", "InstrumentSeries", "episode_progress"]


@dataclass(frozen=True)
class InstrumentSeries:
    """One instrument's scores over an episode, with its baseline and MCID band."""

    instrument: model.Instrument
    dates: tuple[dt.date, ...]
    scores: tuple[float, ...]
    labels: tuple[str, ...]  # what each score is ("before session 2", "outcome")

    @property
    def baseline(self) -> float:
        """The first score of the episode."""
        return self.scores[0]

    @property
    def band(self) -> tuple[float, float]:
        """From the baseline one MCID towards improvement: (low, high), clipped to the scale."""
        spec = self.instrument
        if spec.direction is model.Direction.LOWER_IS_BETTER:
            low, high = self.baseline - spec.mcid, self.baseline
        else:
            low, high = self.baseline, self.baseline + spec.mcid
        return max(low, spec.minimum), min(high, spec.maximum)

    @property
    def latest(self) -> float:
        """The newest score."""
        return self.scores[-1]

    @property
    def improved(self) -> bool:
        """True when the newest score is at least one MCID better than the baseline."""
        return len(self.scores) > 1 and self.instrument.is_responder(self.baseline, self.latest)


@dataclass(frozen=True)
class EpisodeProgress:
    """Pain before and after each session, and every instrument's scores over time."""

    session_ids: tuple[int, ...]
    session_dates: tuple[dt.date, ...]
    nprs_before: tuple[int | None, ...]
    nprs_after: tuple[int | None, ...]
    instruments: tuple[InstrumentSeries, ...]


def _series(
    instrument: str, points: Iterable[tuple[dt.date, float, str]]
) -> InstrumentSeries | None:
    ordered = sorted(points, key=lambda p: p[0])
    if not ordered:
        return None
    return InstrumentSeries(
        instrument=model.OUTCOME_INSTRUMENTS[instrument],
        dates=tuple(p[0] for p in ordered),
        scores=tuple(float(p[1]) for p in ordered),
        labels=tuple(p[2] for p in ordered),
    )


def episode_progress(sessions: Sequence[Any], outcomes: Sequence[Any]) -> EpisodeProgress:
    """Assemble an episode's progress from its sessions and outcome scores.

    Parameters
    ----------
    sessions
        The episode's sessions (``id``, ``date``, ``nprs_before``, ``nprs_after``).
    outcomes
        Its outcome scores (``instrument``, ``score``, ``date``); deleted ones left out.

    Returns
    -------
    EpisodeProgress
        NPRS comes first among the instruments: the pain before each session (the
        pain right after needling is not an outcome), then any NPRS recorded as an
        outcome score; the other instruments follow in :data:`model.OUTCOME_INSTRUMENTS`
        order.
    """
    ordered = sorted(sessions, key=lambda s: (s.date, s.id))
    by_instrument: dict[str, list[tuple[dt.date, float, str]]] = {}
    for number, s in enumerate(ordered, start=1):
        if s.nprs_before is not None:
            by_instrument.setdefault("nprs", []).append(
                (s.date, s.nprs_before, f"before session {number}")
            )
    for o in outcomes:
        if getattr(o, "deleted_at", None) is not None:
            continue
        by_instrument.setdefault(o.instrument, []).append((o.date, o.score, "outcome score"))
    series = [
        s
        for name in model.OUTCOME_INSTRUMENTS
        if (s := _series(name, by_instrument.get(name, []))) is not None
    ]
    return EpisodeProgress(
        session_ids=tuple(s.id for s in ordered),
        session_dates=tuple(s.date for s in ordered),
        nprs_before=tuple(s.nprs_before for s in ordered),
        nprs_after=tuple(s.nprs_after for s in ordered),
        instruments=tuple(series),
    )
