"""The Progress view: how the patient is doing across the episode, at a glance.

Pain before and after each session, every outcome instrument over time with its MCID band
from the baseline, and the marks of every session as small multiples on the diagram
(newest first), so a clinician sees where they needled each time and what changed.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import shapely
from bokeh.layouts import column
from bokeh.models import ColumnDataSource, DatetimeTickFormatter, HoverTool, Range1d
from bokeh.models.annotations import BoxAnnotation
from bokeh.models.widgets import Div
from bokeh.plotting import figure
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from tpmap import model
from tpmap.apps.annotate._context import Context
from tpmap.plotting import column_data, figure_title
from tpmap.progress import EpisodeProgress, InstrumentSeries, episode_progress

if TYPE_CHECKING:
    from bokeh.models.ui import UIElement

__all__ = ["ProgressView"]

BEFORE, AFTER, SCORE = "#173f7a", "#c4554c", "#1b6e53"
BAND = "#7fb08f"
_CELL_GAP = 4.0  # cm between views in a small multiple
_CELL_TITLE = 14.0  # cm above each small multiple for its date
#: The small multiples show the part of the body that was needled, this much around it (cm),
#: and never less than _MIN_SPAN cm high: a knee close up when only the knee was needled.
_CROP_MARGIN = 8.0
_MIN_SPAN = 36.0
_DEFAULT_START = dt.datetime(2026, 1, 1)
_DEFAULT_END = dt.datetime(2026, 2, 1)


def _days(dates: tuple[dt.date, ...]) -> list[dt.datetime]:
    return [dt.datetime.combine(d, dt.time()) for d in dates]


def _time_figure(
    title: str, width: int, height: int, y: tuple[float, float], x_range: Range1d
) -> figure:
    fig = figure(
        title=title,
        width=width,
        height=height,
        x_axis_type="datetime",
        x_range=x_range,  # one time axis for pain and every instrument: read down a date
        y_range=Range1d(start=y[0], end=y[1]),
        toolbar_location=None,
        tools="",
    )
    fig.xaxis.formatter = DatetimeTickFormatter(days="%d %b", months="%b %Y")
    figure_title(fig).text_font_size = "12px"
    fig.yaxis.axis_label_text_font_size = "11px"
    fig.min_border_left = 40
    return fig


class ProgressView:
    """The episode's pain, outcome scores and needling sites over time."""

    def __init__(self, ctx: Context, *, width: int) -> None:
        self.ctx = ctx
        self.width = width
        self.summary = Div(text="", name="progress-summary", render_as_text=True, width=width)
        w = width - 20
        self.nprs_source = ColumnDataSource(
            {"date": [], "before": [], "after": [], "label": []}, name="progress-nprs"
        )
        self.dates = Range1d(start=_DEFAULT_START, end=_DEFAULT_END, name="progress-dates")
        self.nprs = _time_figure(
            "Pain (NPRS) before and after each session", w, 170, (0, 10.5), self.dates
        )
        self.nprs_band = BoxAnnotation(fill_color=BAND, fill_alpha=0.18, line_alpha=0)
        self.nprs.add_layout(self.nprs_band)
        before = self.nprs.scatter(
            "date", "before", source=self.nprs_source, size=9, color=BEFORE, legend_label="before"
        )
        self.nprs.line("date", "before", source=self.nprs_source, color=BEFORE, line_width=2)
        self.nprs.scatter(
            "date",
            "after",
            source=self.nprs_source,
            size=9,
            marker="diamond",
            fill_color="white",
            line_color=AFTER,
            line_width=2,
            legend_label="after",
        )
        self.nprs.legend.location = "top_right"  # pain falls over an episode: room up there
        self.nprs.legend.background_fill_alpha = 0.7
        self.nprs.legend.orientation = "horizontal"
        self.nprs.legend.label_text_font_size = "10px"
        self.nprs.add_tools(
            HoverTool(
                renderers=[before],
                tooltips=[("Session", "@label"), ("NPRS before", "@before"), ("after", "@after")],
                mode="vline",
            )
        )
        self._instrument_figs: dict[str, tuple[figure, ColumnDataSource, BoxAnnotation]] = {}
        # Filled when an episode is shown; a hidden placeholder until then (Bokeh warns
        # about an empty layout in every new page otherwise).
        self.instruments = column(Div(visible=False), name="progress-instruments")
        self.marks_source = ColumnDataSource(
            {"x": [], "y": [], "label": [], "date": []}, name="progress-marks"
        )
        self.outline_source = ColumnDataSource({"xs": [], "ys": []}, name="progress-outlines")
        self.title_source = ColumnDataSource({"x": [], "y": [], "text": []})
        self.sites = figure(
            title="Where each session needled (newest first)",
            width=w,
            height=200,
            match_aspect=True,
            toolbar_location=None,
            tools="",
            name="progress-sites",
        )
        self.sites.axis.visible = False
        self.sites.grid.visible = False
        self.sites.outline_line_color = None
        figure_title(self.sites).text_font_size = "12px"
        self.sites.patches(
            "xs", "ys", source=self.outline_source, fill_color="#f4e4d4", line_color="#8a6f5a"
        )
        dots = self.sites.scatter(
            "x", "y", source=self.marks_source, size=6, color=BEFORE, line_color="white"
        )
        self.sites.text(
            "x",
            "y",
            "text",
            source=self.title_source,
            text_font_size="10px",
            text_align="center",
            text_baseline="bottom",
        )
        self.sites.add_tools(
            HoverTool(renderers=[dots], tooltips=[("Session", "@date"), ("Needled", "@label")])
        )
        self.layout = column(
            self.summary,
            self.nprs,
            self.instruments,
            self.sites,
            name="progress",
            width=width,
            height=560,
            styles={"overflow-y": "auto"},
        )
        self.progress: EpisodeProgress | None = None

    def resize(self, width: int, height: int) -> None:
        """Fit the view into the panel (it scrolls when it holds more)."""
        self.width = width
        w = width - 20
        for fig in (self.nprs, self.sites, *(f for f, _, _ in self._instrument_figs.values())):
            if fig.width != w:
                fig.width = w
        if self.layout.height != height:
            self.layout.height = height
        if self.layout.width != width:
            self.layout.width = width
        if self.summary.width != width:
            self.summary.width = width

    # ------------------------------------------------------------------ loading
    def load(self) -> None:
        """Read the open episode (off the event loop) and draw it."""
        ctx = self.ctx
        episode_id = ctx.state.episode_id
        if episode_id is None:
            self.show(None, [])
            return

        def work() -> tuple[EpisodeProgress, list[Any]]:
            sessions = ctx.store.list_sessions(episode_id)
            outcomes = ctx.store.list_outcomes(episode_id)
            marks = ctx.store.episode_marks(episode_id)
            return episode_progress(sessions, outcomes), marks

        def done(result: tuple[EpisodeProgress, list[Any]]) -> None:
            if ctx.state.episode_id == episode_id:
                self.show(*result)

        ctx.run.submit(work, done, lambda exc: ctx.status.fail(exc, "progress"))

    # ------------------------------------------------------------------ drawing
    def show(self, progress: EpisodeProgress | None, marks: list[Any]) -> None:
        """Draw an episode's progress (None: no episode open)."""
        self.progress = progress
        if progress is None or not progress.session_dates:
            self.summary.text = "Open an episode with at least one session to see its progress."
            self.nprs_source.data = {"date": [], "before": [], "after": [], "label": []}
            self.instruments.children = []
            self._draw_sites(progress, [])
            return
        n = len(progress.session_dates)
        self.nprs_source.data = {
            "date": _days(progress.session_dates),
            "before": [float("nan") if v is None else v for v in progress.nprs_before],
            "after": [float("nan") if v is None else v for v in progress.nprs_after],
            "label": [f"{i} ({d:%d %b %Y})" for i, d in enumerate(progress.session_dates, 1)],
        }
        series = {s.instrument.id: s for s in progress.instruments}
        nprs = series.get("nprs")
        self.nprs_band.update(
            bottom=nprs.band[0] if nprs else None,
            top=nprs.band[1] if nprs else None,
            visible=nprs is not None,
        )
        self._frame_dates(progress)
        children: list[UIElement] = [
            self._instrument_figure(s) for key, s in series.items() if key != "nprs"
        ]
        if list(self.instruments.children) != children:
            self.instruments.children = children
        lines = [f"{n} session{'s' if n != 1 else ''} from {progress.session_dates[0]:%d %b %Y}."]
        for s in progress.instruments:
            change = s.latest - s.baseline
            verdict = "at least one MCID better" if s.improved else "not yet one MCID better"
            lines.append(
                f"{s.instrument.label}: {s.baseline:g} → {s.latest:g} ({change:+g}; "
                f"MCID {s.instrument.mcid:g}): {verdict}."
            )
        self.summary.text = " ".join(lines)
        self._draw_sites(progress, marks)

    def _frame_dates(self, progress: EpisodeProgress) -> None:
        """Every session and every score in view, with a few days' room at each end."""
        dates = [*progress.session_dates, *(d for s in progress.instruments for d in s.dates)]
        first, last = min(dates), max(dates)
        pad = max(3, (last - first).days // 20)
        start = dt.datetime.combine(first - dt.timedelta(days=pad), dt.time())
        end = dt.datetime.combine(last + dt.timedelta(days=pad), dt.time())
        self.dates.update(start=start, end=end)

    def _instrument_figure(self, s: InstrumentSeries) -> figure:
        spec = s.instrument
        if spec.id not in self._instrument_figs:
            better = "lower" if spec.direction is model.Direction.LOWER_IS_BETTER else "higher"
            fig = _time_figure(
                f"{spec.label} ({better} is better; band: MCID {spec.mcid:g})",
                self.width - 20,
                130,
                (spec.minimum, spec.maximum * 1.05),
                self.dates,
            )
            fig.name = f"progress-{spec.id}"
            band = BoxAnnotation(fill_color=BAND, fill_alpha=0.18, line_alpha=0)
            fig.add_layout(band)
            source = ColumnDataSource({"date": [], "score": [], "label": []})
            dots = fig.scatter("date", "score", source=source, size=8, color=SCORE)
            fig.line("date", "score", source=source, color=SCORE, line_width=2)
            fig.add_tools(
                HoverTool(
                    renderers=[dots],
                    tooltips=[("Date", "@date{%d %b %Y}"), (spec.label, "@score")],
                    formatters={"@date": "datetime"},
                )
            )
            self._instrument_figs[spec.id] = (fig, source, band)
        fig, source, band = self._instrument_figs[spec.id]
        source.data = {"date": _days(s.dates), "score": list(s.scores), "label": list(s.labels)}
        band.update(bottom=s.band[0], top=s.band[1])
        return fig

    def _draw_sites(self, progress: EpisodeProgress | None, marks: list[Any]) -> None:
        """Small multiples: each session's views side by side, newest first."""
        atlas = self.ctx.atlas
        if progress is None or not progress.session_ids:
            self.outline_source.data = {"xs": [], "ys": []}
            self.marks_source.data = {"x": [], "y": [], "label": [], "date": []}
            self.title_source.data = {"x": [], "y": [], "text": []}
            return
        used = {m.view for m in marks}
        views = [v for v in model.VIEWS if v in used or v in ("anterior", "posterior")]
        offsets, x = {}, 0.0
        for v in views:
            x0, _y0, x1, _y1 = atlas.bounds(v)
            offsets[v] = x - x0
            x += (x1 - x0) + _CELL_GAP
        cell_w = x + 6.0
        y0, y1 = min(atlas.bounds(v)[1] for v in views), max(atlas.bounds(v)[3] for v in views)
        y0, y1 = _needled_span([m.y for m in marks if m.view in offsets], y0, y1)
        cell_h = (y1 - y0) + _CELL_TITLE
        clipped = {v: _outline_rings(atlas.outline(v), y0, y1) for v in views}
        columns = max(1, min(4, int((self.width - 20) // 150)))
        order = list(reversed(progress.session_ids))  # newest first
        dates = dict(zip(progress.session_ids, progress.session_dates, strict=True))
        outlines: dict[str, list[Any]] = {"xs": [], "ys": []}
        dots: dict[str, list[Any]] = {"x": [], "y": [], "label": [], "date": []}
        titles: dict[str, list[Any]] = {"x": [], "y": [], "text": []}
        by_session: dict[int, list[Any]] = {}
        for m in marks:
            by_session.setdefault(m.session_id, []).append(m)
        for i, session_id in enumerate(order):
            cx = (i % columns) * cell_w
            cy = -(i // columns) * cell_h
            for v in views:
                for xs, ys in clipped[v]:
                    outlines["xs"].append([cx + offsets[v] + px for px in xs])
                    outlines["ys"].append([cy + py for py in ys])
            session_marks = [
                m for m in by_session.get(session_id, []) if m.view in offsets and y0 <= m.y <= y1
            ]
            for m in session_marks:
                dots["x"].append(cx + offsets[m.view] + m.x)
                dots["y"].append(cy + m.y)
                dots["label"].append(self.ctx.label(m.muscle, m.side))
                dots["date"].append(f"{dates[session_id]:%d %b %Y}")
            titles["x"].append(cx + (cell_w - 6.0) / 2)
            titles["y"].append(cy + y1 + 2.0)
            titles["text"].append(f"{dates[session_id]:%d %b} · {len(session_marks)}")
        self.outline_source.data = column_data(outlines)
        self.marks_source.data = column_data(dots)
        self.title_source.data = column_data(titles)
        rows = (len(order) + columns - 1) // columns
        self.sites.x_range.update(start=-3.0, end=columns * cell_w)
        self.sites.y_range.update(start=-(rows - 1) * cell_h + y0 - 2.0, end=y1 + _CELL_TITLE)
        w = self.width - 20
        height = int(40 + rows * (w / columns) * cell_h / cell_w)
        if self.sites.height != height:
            self.sites.height = height


def _needled_span(ys: list[float], low: float, high: float) -> tuple[float, float]:
    """The heights (cm) the small multiples show: where the marks are, with a margin."""
    if not ys:
        return low, high
    lo, hi = min(ys) - _CROP_MARGIN, max(ys) + _CROP_MARGIN
    if hi - lo < _MIN_SPAN:
        middle = (lo + hi) / 2
        lo, hi = middle - _MIN_SPAN / 2, middle + _MIN_SPAN / 2
    # Shift rather than shrink at the ends of the body.
    if lo < low:
        lo, hi = low, min(high, hi + (low - lo))
    if hi > high:
        lo, hi = max(low, lo - (hi - high)), high
    return lo, hi


def _outline_rings(
    outline: BaseGeometry, low: float, high: float
) -> list[tuple[list[float], list[float]]]:
    """The outline's rings cut to the heights ``low`` .. ``high``."""
    x0, _, x1, _ = outline.bounds
    cut = shapely.clip_by_rect(outline, x0 - 1, low, x1 + 1, high)
    rings = []
    for poly in shapely.get_parts(cut):
        if isinstance(poly, Polygon) and not poly.is_empty:
            xs, ys = poly.exterior.xy
            rings.append((list(xs), list(ys)))
    return rings
