"""The selected mark's details (STRICTA items), saved field by field as they change."""

from __future__ import annotations

import html
from typing import Any

from bokeh.layouts import column, row
from bokeh.models.widgets import Div

from tpmap import model
from tpmap.apps.annotate._context import Context
from tpmap.apps.annotate._fields import FieldInput
from tpmap.apps.annotate._state import Change
from tpmap.plotting import VIEW_TITLES

__all__ = ["MarkForm"]

_PROMPT = "<i>Tap a muscle to add a mark, or tap a mark to edit it.</i>"
#: Fields side by side, in form order (the note gets a row of its own).
_ROWS = (
    ("muscle", "technique"),
    ("insertions", "depth_mm"),
    ("ltr_grade", "ltr_count"),
    ("needle_length_mm", "needle_gauge_mm"),
    ("retention_min", "tp_status"),
    ("estim_frequency_hz", "estim_intensity_ma"),
    ("estim_duration_min", "referral_reproduced"),
)


def _half(width: int) -> int:
    # Two fields a row: each widget has a 5 px margin on either side, 8 px between them.
    return (width - 8 - 2 * 10) // 2


class MarkForm:
    """The details of the selected mark; a rejected value keeps its message next to it."""

    def __init__(self, ctx: Context, *, width: int) -> None:
        self.ctx = ctx
        self.title = Div(text=_PROMPT, name="mark-title", width=width)
        specs = model.MARK_FIELDS
        half = _half(width)
        atlas = ctx.atlas
        # The override list offers what lies in the mark's own layer: muscles (and fascia),
        # or the ligaments, tendons and periosteal sites.
        self._choices = {
            layer: [
                (m, atlas.muscle_name(m))
                for m in dict.fromkeys(
                    r.muscle for v in atlas.views for r in atlas.regions_in(v, layer)
                )
            ]
            for layer in model.LAYERS
        }
        muscles = self._choices[model.Layer.SUPERFICIAL] + self._choices[model.Layer.DEEP]
        self.fields: dict[str, FieldInput] = {}
        for name in ("muscle", *model.MARK_DETAIL_FIELDS):
            self.fields[name] = FieldInput(
                specs[name],
                name=f"mark-{name}",
                width=width - 20 if name == "note" else half,
                on_commit=self._commit,
                options=muscles if name == "muscle" else None,
                rows=2 if name == "note" else 1,
            )
        self.widgets = {name: f.widget for name, f in self.fields.items()}
        rows = [row(*(self.fields[n].layout for n in pair), spacing=8) for pair in _ROWS]
        # Shown only while a mark is selected: one visibility change instead of disabling
        # every field keeps the page's updates after a tap few and small.
        self.body = column(*rows, self.fields["note"].layout, visible=False, name="mark-fields")
        self.layout = column(self.title, self.body, width=width, name="mark-form")
        self._shown: int | None = None  # the mark whose values the fields hold
        ctx.state.listen(self._on_state)

    def resize(self, width: int) -> None:
        """Fit the form into ``width`` pixels (two fields a row)."""
        half = _half(width)
        for name, f in self.fields.items():
            w = width - 20 if name == "note" else half
            if f.widget.width != w:
                f.widget.width = w
                f.message.width = w
        if self.title.width != width:
            self.title.width = width
            self.layout.width = width

    def _on_state(self, change: Change) -> None:
        self.refresh()

    def refresh(self) -> None:
        """Show the selected mark's stored values (or the prompt when none is selected)."""
        m = self.ctx.state.selected_mark
        if self.body.visible != (m is not None):
            self.body.visible = m is not None
        if m is None:
            self._shown = None
            if self.title.text != _PROMPT:
                self.title.text = _PROMPT
            return
        same = self._shown == m.id
        self._shown = m.id
        structure = m.layer == model.Layer.STRUCTURES
        choices = (
            self._choices[m.layer]
            if structure
            else self._choices[model.Layer.SUPERFICIAL] + self._choices[model.Layer.DEEP]
        )
        muscle = self.fields["muscle"].widget
        options = [("", "—"), *choices]
        if muscle.options != options:
            muscle.options = options
            muscle.title = "Structure" if structure else model.MARK_FIELDS["muscle"].title
        for name, f in self.fields.items():
            f.show(getattr(m, name), keep_invalid=same)
        applies = set(model.fields_for_technique(m.technique))
        for name in model.ESTIM_FIELDS:
            layout = self.fields[name].layout
            if layout.visible != (name in applies):
                layout.visible = name in applies
        title = (
            f"<b>{html.escape(self.ctx.label(m.muscle, m.side))}</b> · "
            f"{html.escape(VIEW_TITLES[m.view])} · {html.escape(m.layer)}"
            f"{' · muscle set by hand' if m.muscle_overridden else ''}"
        )
        if self.title.text != title:
            self.title.text = title

    def _commit(self, name: str, raw: Any) -> None:
        ctx = self.ctx
        mark = ctx.state.selected_mark
        if mark is None:
            return
        field = self.fields[name]
        if not field.check():
            ctx.status.say(f"Not saved: {field.message.text}", error=True)
            return
        changes: dict[str, Any] = {name: raw}
        if name == "technique" and not model.is_electrical(field.spec.clean(raw)):
            # Stimulation settings only belong to electrical techniques: clear them too.
            changes.update(dict.fromkeys(model.ESTIM_FIELDS))

        def saved(m: Any) -> None:
            ctx.state.update(m)
            value = field.spec.format(getattr(m, name))
            unit = f" {field.spec.unit}" if value and field.spec.unit else ""
            what = f"{field.spec.label.lower()} of {ctx.label(m.muscle, m.side)}"
            ctx.status.say(f"Saved {what}: {value}{unit}" if value else f"Cleared {what}.")

        def failed(exc: Exception) -> None:
            for key, message in ctx.status.fail(exc, "change").items():
                if key in self.fields:
                    self.fields[key].fail(message)

        ctx.run.submit(lambda: ctx.store.update_mark(mark.id, changes), saved, failed)
