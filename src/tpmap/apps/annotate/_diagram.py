"""The diagram: tap a muscle to add a mark, tap a mark to select it, drag it to move it.

Rules kept here, on the server, whatever the browser sends:

- a tap goes through the atlas hit test; off the body it says so and stores nothing;
- a drag moves only the mark under the finger, and only when it is released on a muscle:
  Bokeh's drag tool moves every *selected* point with the one grabbed, so the page never
  leaves a point selected in the browser (the selected mark is drawn from data columns),
  and a change that moves several marks at once, or anything but a stored mark, is refused
  and drawn back;
- every change is one store call on the page's worker and one message in the status line.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from bokeh.events import DoubleTap, PanEnd, Tap
from bokeh.layouts import row
from bokeh.models import (
    ColumnDataSource,
    CustomJS,
    HoverTool,
    InlineStyleSheet,
    PointDrawTool,
    Range,
    Range1d,
)
from bokeh.models.widgets import Button, RadioButtonGroup
from bokeh.plotting import figure

from tpmap import model
from tpmap.apps.annotate._context import Context
from tpmap.apps.annotate._state import Change
from tpmap.apps.annotate._status import describe
from tpmap.plotting import atlas_figure, column_data, show_layer

if TYPE_CHECKING:
    from bokeh.models.glyph import XYGlyph
    from bokeh.models.renderers import GlyphRenderer

__all__ = ["SAVED_FILL", "SAVING_FILL", "SELECT_RADIUS_CM", "Diagram"]

#: The knee joint line on the reference body (0.285 H for H = 170 cm; Drillis & Contini).
KNEE_JOINT_Y = 48.5
#: A tap this close (cm) to a mark of the session selects it instead of adding one.
SELECT_RADIUS_CM = 0.8
SAVED_FILL = "#173f7a"
SAVING_FILL = "#ffffff"
SELECTED_FILL = "#f2a900"
EARLIER_FILL = "#6b6b6b"
_MARK_COLUMNS = ("id", "x", "y", "label", "state", "fill", "line", "size")

#: Pairs of views shown side by side: front and back, then both sides. A tall, narrow body
#: leaves room for two on a 1024 x 768 tablet, and front-and-back is how clinicians chart
#: the hip and thigh.
VIEW_PAIRS: tuple[tuple[str, str], ...] = (
    ("anterior", "posterior"),
    ("lateral_right", "lateral_left"),
)
VIEW_PAIR_LABELS = ("Front & back", "Sides")


def _span(rng: Range) -> Range1d:
    """A figure's range as the Range1d atlas_figure made it (Plot declares the wider Range)."""
    return cast(Range1d, rng)


def _extent(fig: figure) -> tuple[float, float, float, float]:
    """A figure's ranges as ``(x0, x1, y0, y1)``."""
    x, y = _span(fig.x_range), _span(fig.y_range)
    # Floats: atlas_figure set them (a Range1d could also hold datetimes).
    return cast("tuple[float, float, float, float]", (x.start, x.end, y.start, y.end))


def _same_columns(old: Any, new: dict[str, list[Any]]) -> bool:
    """True when a source's columns already hold ``new`` (browser edits arrive as arrays)."""
    return set(old) == set(new) and all(list(old[k]) == new[k] for k in new)


class Diagram:
    """The body diagram with this session's marks, earlier sessions' marks and the switches."""

    def __init__(self, ctx: Context, *, height: int) -> None:
        self.ctx = ctx
        self.atlas = ctx.atlas
        self.views = [v for pair in VIEW_PAIRS for v in pair]
        self.view_switch = RadioButtonGroup(labels=list(VIEW_PAIR_LABELS), active=0, name="views")
        self.layers = tuple(
            layer
            for layer in model.LAYERS
            if any(self.atlas.regions_in(view, layer) for view in self.views)
        )
        self.layer_switch = RadioButtonGroup(
            labels=[model.LAYER_LABELS.get(layer, layer.capitalize()) for layer in self.layers],
            active=0,
            name="layer",
        )
        self.undo_button = Button(label="↶ Undo", name="undo", width=80)
        self.delete_button = Button(
            label="Delete mark", name="delete", width=100, button_type="danger", disabled=True
        )
        self.figures: dict[str, figure] = {}
        self.sources: dict[str, ColumnDataSource] = {}
        self.earlier_sources: dict[str, ColumnDataSource] = {}
        self._drawing = False  # True while the page itself writes the mark sources
        self.knee_side = "right"  # the knee the structures layer shows close up
        for view in self.views:
            self.figures[view] = self._figure(view, height)
        # Each view's whole-body ranges (x0, x1, y0, y1), to come back to from a close-up.
        self._full = {v: _extent(f) for v, f in self.figures.items()}
        self.figure_row = row(*self.figures.values(), name="figures", spacing=8)
        self.controls = row(self.view_switch, name="diagram-controls")
        # The layer switch sits with Undo and Delete over the side panel, where there is
        # room for its three buttons; the row wraps in a narrow (portrait) panel.
        self.actions = row(
            self.layer_switch,
            self.undo_button,
            self.delete_button,
            spacing=8,
            name="mark-actions",
            stylesheets=[InlineStyleSheet(css=":host { flex-wrap: wrap; row-gap: 4px; }")],
        )

        self.view_switch.on_change("active", lambda _a, _o, new: self._show_view(new))
        self.layer_switch.on_change("active", lambda _a, _o, new: self._show_layer(new))
        self.undo_button.on_click(self.undo)
        self.delete_button.on_click(self.delete)
        ctx.state.listen(self._on_state)
        self._show_view(0)

    # ------------------------------------------------------------------ figures
    def _figure(self, view: str, height: int) -> figure:
        fig = atlas_figure(self.atlas, view, height=height, muscle_alpha=0.85)
        fig.toolbar.logo = None
        earlier = ColumnDataSource(
            {"x": [], "y": [], "label": [], "date": []}, name=f"earlier-{view}"
        )
        earlier_marks = fig.scatter(
            "x",
            "y",
            source=earlier,
            size=11,
            marker="circle",
            fill_color=EARLIER_FILL,
            fill_alpha=0.35,
            line_color="white",
            line_alpha=0.6,
            name=f"earlier-marks-{view}",
        )
        source = ColumnDataSource(column_data(self._mark_data([])), name=f"marks-{view}")
        marks = fig.scatter(
            "x",
            "y",
            source=source,
            size="size",
            marker="circle",
            fill_color="fill",
            line_color="line",
            line_width=2.5,
            # The selected mark is drawn from the data (fill, size); the browser's own
            # selection only lives for the length of a drag and must not change the look.
            nonselection_fill_alpha=1.0,
            nonselection_line_alpha=1.0,
            name=f"current-marks-{view}",
        )
        # Drag a mark to move it (no adding or deleting through this tool: taps add marks).
        # Bokeh's stubs keep GlyphRenderer invariant in its glyph; a Scatter is an XYGlyph.
        drag_renderers = [cast("GlyphRenderer[XYGlyph]", marks)]
        drag = PointDrawTool(renderers=drag_renderers, add=False, drag=True, num_objects=0)
        fig.add_tools(drag)
        fig.toolbar.active_drag = drag
        fig.add_tools(
            HoverTool(
                renderers=[earlier_marks],
                tooltips=[("Earlier session", "@date"), ("Muscle", "@label")],
            ),
            HoverTool(renderers=[marks], tooltips=[("Mark", "@label"), ("", "@state")]),
        )
        # After the drag tool's own tap or drag, clear the browser's selection, so that the
        # next drag starts with nothing selected and moves only the point grabbed.
        clear = CustomJS(args={"source": source}, code="source.selected.indices = []")
        fig.js_on_event(Tap, clear)
        fig.js_on_event(PanEnd, clear)
        fig.on_event(Tap, lambda e, v=view: self.tap(v, e.x, e.y))
        fig.on_event(DoubleTap, lambda e, v=view: self.tap(v, e.x, e.y))
        source.on_change("data", self._dragged(view))
        self.sources[view] = source
        self.earlier_sources[view] = earlier
        return fig

    def _width(self, view: str, height: int) -> int:
        x0, x1, y0, y1 = self._full[view]
        return max(int(height * (x1 - x0) / (y1 - y0)) + 20, 120)

    def resize(self, height: int) -> None:
        """Give every figure ``height`` pixels; widths follow the body's proportions."""
        for view, fig in self.figures.items():
            width = self._width(view, height)
            if fig.height != height:
                fig.height = height
            if fig.width != width:
                fig.width = width

    def pair_width(self, height: int) -> int:
        """The width the widest pair of views takes at ``height`` pixels."""
        return max(sum(self._width(v, height) for v in pair) + 8 for pair in VIEW_PAIRS)

    def _show_view(self, index: int) -> None:
        shown = VIEW_PAIRS[index] if 0 <= index < len(VIEW_PAIRS) else VIEW_PAIRS[0]
        for view, fig in self.figures.items():
            if fig.visible != (view in shown):
                fig.visible = view in shown

    def _show_layer(self, _index: int) -> None:
        layer = self.layer
        for fig in self.figures.values():
            show_layer(fig, layer)
        self._frame_ranges()

    def _frame_ranges(self) -> None:
        """Show the whole body, or (structures layer) the knee close up, where fingers
        need the room: a ligament is a few millimetres wide on the whole-body view."""
        for view, fig in self.figures.items():
            extent = self._full[view]
            if self.layer == model.Layer.STRUCTURES:
                extent = self._knee_extent(view, fig) or extent
            x0, x1, y0, y1 = extent
            for rng, (start, end) in (
                (_span(fig.x_range), (x0, x1)),
                (_span(fig.y_range), (y0, y1)),
            ):
                if (rng.start, rng.end) != (start, end):
                    rng.update(start=start, end=end)

    def _knee_structures(self, view: str) -> list[Any]:
        side = self.knee_side if view in ("anterior", "posterior") else None
        return [
            r
            for r in self.atlas.regions_in(view, model.Layer.STRUCTURES)
            if (side is None or r.side == side) and 35.0 <= r.polygon.centroid.y <= 65.0
        ]

    def _knee_extent(self, view: str, fig: figure) -> tuple[float, float, float, float] | None:
        # One zoom for every view, set by the front view's knee structures with a margin;
        # each view centred on its own knee structures (or the leg at the joint line).
        front = self._knee_structures("anterior")
        if not front:
            return None
        bounds = [r.polygon.bounds for r in front]
        ax0, ax1, ay0, ay1 = self._full["anterior"]
        front_aspect = (ax1 - ax0) / (ay1 - ay0)
        span_x = max(b[2] for b in bounds) - min(b[0] for b in bounds)
        span_y = max(b[3] for b in bounds) - min(b[1] for b in bounds)
        half_h = max(span_x / front_aspect, span_y) / 2 + 4.0
        x0, x1, y0, y1 = self._full[view]
        half_w = half_h * (x1 - x0) / (y1 - y0)  # the frame's proportions are kept
        own = self._knee_structures(view)
        if own:
            cx = sum(r.polygon.centroid.x for r in own) / len(own)
            cy = sum(r.polygon.centroid.y for r in own) / len(own)
        else:
            cx, cy = (x0 + x1) / 2, KNEE_JOINT_Y
        return (cx - half_w, cx + half_w, cy - half_h, cy + half_h)

    def focus_knee(self, affected_side: str | None) -> None:
        """Close-ups of the structures layer show the episode's affected knee."""
        side = affected_side if affected_side in model.SIDES else "right"
        if side != self.knee_side:
            self.knee_side = side
            self._frame_ranges()

    @property
    def layer(self) -> str:
        """The layer a tap goes to (the one shown)."""
        index = self.layer_switch.active
        if index is None or not 0 <= index < len(self.layers):
            return self.layers[0]  # also for None: Bokeh lets a RadioButtonGroup have no choice
        return self.layers[index]

    def show_view_of(self, view: str) -> None:
        """Switch to the pair of views that shows ``view``."""
        for i, pair in enumerate(VIEW_PAIRS):
            if view in pair and self.view_switch.active != i:
                self.view_switch.active = i

    # ------------------------------------------------------------------ drawing
    @staticmethod
    def _mark_data(rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
        return {k: [r[k] for r in rows] for k in _MARK_COLUMNS}

    def _on_state(self, change: Change) -> None:
        if change == "session":
            self._draw_earlier()
        self.redraw()
        selected = self.ctx.state.selected_mark
        if self.delete_button.disabled != (selected is None):
            self.delete_button.disabled = selected is None
        if selected is not None and change == "selection":
            self.show_view_of(selected.view)

    def redraw(self) -> None:
        """Draw this session's marks (saved, saving, selected) from the page's state."""
        state = self.ctx.state
        for view, source in self.sources.items():
            rows = [
                {
                    "id": m.id,
                    "x": m.x,
                    "y": m.y,
                    "label": self.ctx.label(m.muscle, m.side),
                    "state": "selected" if m.id == state.selected else "saved",
                    "fill": SELECTED_FILL if m.id == state.selected else SAVED_FILL,
                    "line": "#000000" if m.id == state.selected else SAVED_FILL,
                    "size": 20 if m.id == state.selected else 16,
                }
                for m in state.marks.values()
                if m.view == view
            ]
            rows += [
                {
                    "id": p.id,
                    "x": p.x,
                    "y": p.y,
                    "label": p.label,
                    "state": "saving…",
                    "fill": SAVING_FILL,
                    "line": SAVED_FILL,
                    "size": 16,
                }
                for p in state.pending.values()
                if p.view == view
            ]
            data = self._mark_data(rows)
            # Only send what changed: every assignment is a message to the browser and a
            # re-render there, and a tap should cost one of each.
            if not _same_columns(source.data, data):
                self._drawing = True
                try:
                    source.data = column_data(data)
                finally:
                    self._drawing = False

    def _draw_earlier(self) -> None:
        for view, source in self.earlier_sources.items():
            pts = [m for m in self.ctx.state.earlier if m.view == view]
            source.data = {
                "x": [m.x for m in pts],
                "y": [m.y for m in pts],
                "label": [self.ctx.label(m.muscle, m.side) for m in pts],
                "date": [m.session_date.isoformat() for m in pts],
            }

    # ------------------------------------------------------------------ taps
    def _nearest_mark(self, view: str, x: float, y: float) -> int | None:
        best, best_d = None, SELECT_RADIUS_CM
        for m in self.ctx.state.marks.values():
            if m.view == view:
                d = math.hypot(m.x - x, m.y - y)
                if d <= best_d:
                    best, best_d = m.id, d
        return best

    def tap(self, view: str, x: float | None, y: float | None) -> None:
        """A tap (or a quick second tap) at diagram coordinates ``(x, y)`` of ``view``."""
        ctx, state = self.ctx, self.ctx.state
        if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
            return
        if view not in self.figures:
            return
        if state.session_id is None:
            ctx.status.say("Choose or start a session first: nothing was saved.", error=True)
            return
        near = self._nearest_mark(view, x, y)
        if near is not None:
            state.select(near)
            m = state.marks[near]
            ctx.status.say(f"Selected {self.ctx.label(m.muscle, m.side)}.")
            return
        region = self.atlas.region_at(view, x, y, layer=self.layer)
        if region is None:
            where = "structure" if self.layer == model.Layer.STRUCTURES else "muscle"
            ctx.status.say(f"Not on a {where}: nothing was saved.", error=True)
            return
        fields = {
            "view": view,
            "x": float(x),
            "y": float(y),
            "muscle": region.muscle,
            "side": region.side,
            "layer": region.layer,
            "atlas_version": self.atlas.version,
        }
        # The hollow mark says "saving"; the status line speaks once, when the tap is kept
        # (one message per action, and one message less before the mark shows as saved).
        pending = state.add_pending(view, float(x), float(y), region.label)
        session_id = state.session_id

        def saved(mark: Any) -> None:
            state.saved(pending.id, mark)
            ctx.status.say(f"Saved: {self.ctx.label(mark.muscle, mark.side)}")

        def failed(exc: Exception) -> None:
            state.drop_pending(pending.id)
            message, _ = describe(exc, "tap")
            ctx.status.say(f"{region.label}: {message}", error=True)

        ctx.run.submit(lambda: ctx.store.add_mark(session_id, fields), saved, failed)

    # ------------------------------------------------------------------ drags
    def _dragged(self, view: str) -> Callable[[str, Any, Any], None]:
        def changed(_attr: str, _old: Any, new: dict[str, Any]) -> None:
            if not self._drawing:
                self.drag(view, new)

        return changed

    def drag(self, view: str, data: dict[str, Any]) -> None:
        """The browser moved points of ``view``: move the one mark dragged, or put all back."""
        ctx, state = self.ctx, self.ctx.state
        try:
            rows = list(zip(data["id"], data["x"], data["y"], strict=True))
        except (KeyError, TypeError, ValueError):
            self.redraw()
            return
        moved = []
        for mark_id, x, y in rows:
            m = state.marks.get(mark_id) if isinstance(mark_id, int) else None
            if m is None or m.view != view:
                if mark_id in state.pending:
                    continue  # still saving: compared when it is stored
                self.redraw()
                return
            if x != m.x or y != m.y:
                moved.append((m, x, y))
        if len(rows) != sum(1 for m in state.marks.values() if m.view == view) + sum(
            1 for p in state.pending.values() if p.view == view
        ):
            self.redraw()  # a point added or removed in the browser: draw what is stored
            return
        if not moved:
            return
        if len(moved) > 1:
            self.redraw()
            ctx.status.say("Drag one mark at a time: nothing was moved.", error=True)
            return
        mark, x, y = moved[0]
        if not (isinstance(x, int | float) and isinstance(y, int | float)) or not (
            math.isfinite(x) and math.isfinite(y)
        ):
            self.redraw()
            return
        region = self.atlas.region_at(view, float(x), float(y), layer=mark.layer)
        if region is None:
            self.redraw()  # put it back where it is stored
            where = "structure" if mark.layer == model.Layer.STRUCTURES else "muscle"
            ctx.status.say(
                f"Not on a {where}: {self.ctx.label(mark.muscle, mark.side)} was put back.",
                error=True,
            )
            return

        def done(m: Any) -> None:
            state.update(m)
            state.select(m.id)
            ctx.status.say(f"Moved to {self.ctx.label(m.muscle, m.side)}.")

        def failed(exc: Exception) -> None:
            self.redraw()
            ctx.status.fail(exc, "move")

        ctx.run.submit(
            lambda: ctx.store.move_mark(
                mark.id, float(x), float(y), region.muscle, region.side, region.layer
            ),
            done,
            failed,
        )

    # ------------------------------------------------------------------ delete and undo
    def delete(self) -> None:
        """Delete the selected mark (soft: Undo brings it back)."""
        ctx, state = self.ctx, self.ctx.state
        mark = state.selected_mark
        if mark is None:
            ctx.status.say("Tap a mark first to choose which one to delete.", error=True)
            return
        session_id = state.session_id

        def done(marks: list[Any]) -> None:
            if session_id == state.session_id:
                state.replace_marks(marks)
            ctx.status.say(
                f"Deleted {self.ctx.label(mark.muscle, mark.side)}. Undo brings it back."
            )

        def work() -> list[Any]:
            ctx.store.delete_mark(mark.id)
            # The mark's session is the open one (the state holds only that session's marks).
            return ctx.store.session_marks(mark.session_id)

        ctx.run.submit(work, done, lambda exc: ctx.status.fail(exc, "deletion"))

    def undo(self) -> None:
        """Undo the latest change to this session's marks and select the mark it touched."""
        ctx, state = self.ctx, self.ctx.state
        session_id = state.session_id
        if session_id is None:
            ctx.status.say("Nothing to undo: no session is open.", error=True)
            return
        before = dict(state.marks)

        def work() -> tuple[str | None, list[Any]]:
            text = ctx.store.undo_last(session_id)
            return text, ctx.store.session_marks(session_id)

        def done(result: tuple[str | None, list[Any]]) -> None:
            text, marks = result
            if session_id != state.session_id:
                return
            # The mark the undo touched: one that came back, or one whose values changed.
            touched = next((m.id for m in marks if m.id not in before), None)
            if touched is None:
                touched = next((m.id for m in marks if before.get(m.id) != m), None)
            state.replace_marks(marks, select=touched)
            ctx.status.say(text or "Nothing to undo in this session.")

        ctx.run.submit(work, done, lambda exc: ctx.status.fail(exc, "undo"))
