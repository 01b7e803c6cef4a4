"""The Outcomes panel: an episode's outcome instrument scores, added, corrected and removed.

Every instrument of :data:`tpmap.model.OUTCOME_INSTRUMENTS` (WOMAC, KOOS, Kujala/AKPS,
LEFS, NPRS, VAS) can be scored with its date (today by default). A score outside the
instrument's range gets the instrument's own message next to the field and changes
nothing. For the questionnaires the clinician may enter the item answers instead and have
the total computed (:mod:`tpmap.apps.annotate._items`). Corrections and removals are kept
in the outcome change log: Undo walks back through them, as it does for marks.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from bokeh.layouts import column, row
from bokeh.models import ColumnDataSource, InlineStyleSheet
from bokeh.models.widgets import Button, DataTable, Div, TableColumn

from tpmap import model
from tpmap.apps.annotate._context import Context
from tpmap.apps.annotate._fields import FieldInput
from tpmap.apps.annotate._items import ItemAnswers
from tpmap.plotting import column_data

__all__ = ["OutcomesPanel"]

_PROMPT = "Open an episode to record its outcome scores."


def _score_title(instrument: str | None) -> str:
    spec = model.OUTCOME_INSTRUMENTS.get(instrument or "")
    if spec is None:
        return "Score"
    unit = "" if spec.unit == "points" else f" {spec.unit}"
    return f"Score ({spec.minimum:g}–{spec.maximum:g}{unit})"


def _beside_button(width: int) -> int:
    """The width of a field that shares its row with a 110 px field or button."""
    return max(120, width - 20 - 110 - 8)


class OutcomesPanel:
    """Add, correct, remove and undo an episode's outcome scores; list them over time."""

    def __init__(self, ctx: Context, *, width: int, height: int) -> None:
        self.ctx = ctx
        specs = model.OUTCOME_FIELDS
        self.fields = {
            "instrument": FieldInput(
                specs["instrument"],
                name="outcome-instrument",
                width=_beside_button(width),
                options=specs["instrument"].options(),
            ),
            "score": FieldInput(specs["score"], name="outcome-score", width=110),
            "date": FieldInput(specs["date"], name="outcome-date", width=_beside_button(width)),
        }
        self.fields["date"].widget.title = "Date"
        self.fields["date"].set(dt.date.today())
        self.fields["instrument"].widget.on_change(
            "value", lambda _a, _o, new: self._instrument_chosen(new)
        )
        self.title = Div(text=_PROMPT, name="outcomes-title", width=width - 20)
        self.add_button = Button(
            label="Add score", button_type="primary", name="add-outcome", width=110
        )
        self.save_button = Button(
            label="Save correction", name="save-outcome", width=130, disabled=True
        )
        self.remove_button = Button(
            label="Remove score", name="remove-outcome", width=120, button_type="danger",
            disabled=True,
        )  # fmt: skip
        self.undo_button = Button(label="↶ Undo", name="undo-outcome", width=80)
        self.items = ItemAnswers(width=width, on_total=self._total, on_open=self._items_open)
        self.source = ColumnDataSource(column_data(self._data([])), name="outcomes-source")
        self.table = DataTable(
            source=self.source,
            columns=[
                TableColumn(field="instrument", title="Instrument", width=170),
                TableColumn(field="date", title="Date", width=90),
                TableColumn(field="score", title="Score", width=60),
                TableColumn(field="change", title="From baseline", width=120),
            ],
            width=width - 20,
            height=height,
            index_position=None,
            name="outcomes-table",
        )
        self.layout = column(
            self.title,
            row(self.fields["instrument"].layout, self.fields["score"].layout, spacing=8),
            self.items.layout,
            row(self.fields["date"].layout, self.add_button, spacing=8),
            row(
                self.save_button,
                self.remove_button,
                self.undo_button,
                spacing=8,
                stylesheets=[InlineStyleSheet(css=":host { flex-wrap: wrap; row-gap: 4px; }")],
            ),
            self.table,
            width=width,
            name="outcomes",
        )
        self.outcomes: list[Any] = []
        self.selected: int | None = None
        self._writing = False
        self.add_button.on_click(self.add)
        self.save_button.on_click(self.save)
        self.remove_button.on_click(self.remove)
        self.undo_button.on_click(self.undo)
        self.source.selected.on_change("indices", self._chosen)

    def resize(self, width: int, height: int) -> None:
        """Fit the fields, the buttons and the list into a panel ``width`` pixels wide."""
        beside = _beside_button(width)
        sizes = [
            (self.fields["instrument"].widget, beside),
            (self.fields["instrument"].message, beside),
            (self.fields["date"].widget, beside),
            (self.fields["date"].message, beside),
            (self.title, width - 20),
            (self.table, width - 20),
            (self.layout, width),
        ]
        for widget, w in sizes:
            if widget.width != w:
                widget.width = w
        self.items.resize(width)
        if self.table.height != height:
            self.table.height = height

    # ------------------------------------------------------------------ showing
    @staticmethod
    def _data(outcomes: list[Any]) -> dict[str, list[Any]]:
        """One row per score, by instrument then date, with its change from the baseline."""
        baseline: dict[str, float] = {}
        data: dict[str, list[Any]] = {
            k: [] for k in ("id", "instrument", "date", "score", "change")
        }
        for o in sorted(outcomes, key=lambda o: (o.instrument, o.date, o.id)):
            spec = model.OUTCOME_INSTRUMENTS[o.instrument]
            if o.instrument not in baseline:
                baseline[o.instrument] = o.score
                change = "baseline"
            else:
                better = spec.improvement(baseline[o.instrument], o.score)
                mcid = " (≥ MCID)" if spec.is_responder(baseline[o.instrument], o.score) else ""
                change = f"{better:g} better{mcid}" if better >= 0 else f"{-better:g} worse"
            data["id"].append(o.id)
            data["instrument"].append(spec.label)
            data["date"].append(f"{o.date:%d %b %Y}")
            data["score"].append(f"{o.score:g}")
            data["change"].append(change)
        return data

    def load(self) -> None:
        """Read the open episode's scores (off the event loop) and list them."""
        ctx = self.ctx
        episode_id = ctx.state.episode_id
        if episode_id is None:
            self.show([])
            return

        def done(outcomes: list[Any]) -> None:
            if ctx.state.episode_id == episode_id:
                self.show(outcomes)

        ctx.run.submit(
            lambda: ctx.store.list_outcomes(episode_id),
            done,
            lambda exc: ctx.status.fail(exc, "outcome scores"),
        )

    def show(self, outcomes: list[Any], *, select: int | None = None) -> None:
        """List ``outcomes`` (scores over time, per instrument) and select one, or none."""
        self.outcomes = list(outcomes)
        data = self._data(self.outcomes)
        n = len(self.outcomes)
        if self.ctx.state.episode_id is None:
            title = _PROMPT
        elif n:
            scores = f"{n} outcome score{'s' if n != 1 else ''}"
            title = f"{scores} in this episode; choose one to correct or remove it."
        else:
            title = "No outcome scores yet: choose an instrument, type the score and Add."
        if self.title.text != title:
            self.title.text = title
        self._writing = True
        try:
            self.source.data = column_data(data)
            index = [data["id"].index(select)] if select in data["id"] else []
            self.source.selected.indices = index
        finally:
            self._writing = False
        self._select(select if select in data["id"] else None)

    def _chosen(self, _attr: str, _old: list[int], new: list[int]) -> None:
        if self._writing:
            return
        ids = self.source.data["id"]
        index = new[0] if new and isinstance(new[0], int) and 0 <= new[0] < len(ids) else None
        self._select(None if index is None else ids[index])

    def _select(self, outcome_id: int | None) -> None:
        """Choose a score to correct or remove (None: back to adding a new one)."""
        self.selected = outcome_id
        chosen = next((o for o in self.outcomes if o.id == outcome_id), None)
        for button in (self.save_button, self.remove_button):
            if button.disabled != (chosen is None):
                button.disabled = chosen is None
        if chosen is not None:
            self.fields["instrument"].show(chosen.instrument)
            self.fields["score"].show(chosen.score)
            self.fields["date"].show(chosen.date)
            self._instrument_chosen(chosen.instrument)

    def _instrument_chosen(self, instrument: str) -> None:
        title = _score_title(instrument)
        if self.fields["score"].widget.title != title:
            self.fields["score"].widget.title = title
        self.items.show_instrument(instrument)

    def _total(self, total: float) -> None:
        # The answers' total goes into the score field, where the clinician sees (and may
        # still change) exactly what Add score will save.
        self.fields["score"].show(total)

    def _items_open(self, is_open: bool) -> None:
        # While answering items the list of scores makes room for them.
        if self.table.visible != (not is_open):
            self.table.visible = not is_open

    # ------------------------------------------------------------------ changes
    def _values(self) -> dict[str, Any]:
        return {name: f.value for name, f in self.fields.items()}

    def _failed(self, exc: Exception) -> None:
        for key, message in self.ctx.status.fail(exc, "outcome score").items():
            if key in self.fields:
                self.fields[key].fail(message)

    def _reload(self, message: str, select: int | None) -> None:
        ctx = self.ctx
        episode_id = ctx.state.episode_id
        if episode_id is None:
            return

        def done(outcomes: list[Any]) -> None:
            self.show(outcomes, select=select)
            ctx.status.say(message)

        ctx.run.submit(
            lambda: ctx.store.list_outcomes(episode_id),
            done,
            lambda exc: ctx.status.fail(exc, "outcome scores"),
        )

    def _label(self, o: Any) -> str:
        spec = model.OUTCOME_INSTRUMENTS[o.instrument]
        return f"{spec.label} {o.score:g} on {o.date:%d %b %Y}"

    def add(self) -> None:
        """Store the score typed into the form for the open episode."""
        ctx = self.ctx
        episode_id = ctx.state.episode_id
        if episode_id is None:
            ctx.status.say("Open an episode first: nothing was saved.", error=True)
            return
        for f in self.fields.values():
            f.clear()
        values = self._values()

        def done(o: Any) -> None:
            self.fields["score"].show(None)
            self.items.close()
            self._reload(f"Saved {self._label(o)}.", None)

        ctx.run.submit(lambda: ctx.store.add_outcome(episode_id, values), done, self._failed)

    def save(self) -> None:
        """Correct the chosen score with what the form holds now."""
        ctx, chosen = self.ctx, self.selected
        if chosen is None:
            ctx.status.say("Choose the score to correct first.", error=True)
            return
        for f in self.fields.values():
            f.clear()
        values = self._values()

        def done(o: Any) -> None:
            self._reload(f"Corrected: {self._label(o)}.", o.id)

        ctx.run.submit(lambda: ctx.store.update_outcome(chosen, values), done, self._failed)

    def remove(self) -> None:
        """Remove the chosen score (entered by mistake); Undo brings it back."""
        ctx, chosen = self.ctx, self.selected
        if chosen is None:
            ctx.status.say("Choose the score to remove first.", error=True)
            return

        def done(o: Any) -> None:
            self._reload(f"Removed {self._label(o)}. Undo brings it back.", None)

        ctx.run.submit(
            lambda: ctx.store.delete_outcome(chosen),
            done,
            lambda exc: ctx.status.fail(exc, "removal"),
        )

    def undo(self) -> None:
        """Undo the latest change to this episode's scores and select the score it touched."""
        ctx = self.ctx
        episode_id = ctx.state.episode_id
        if episode_id is None:
            ctx.status.say("Nothing to undo: no episode is open.", error=True)
            return

        def done(result: Any) -> None:
            if result is None:
                ctx.status.say("No change to this episode's outcome scores to undo.")
                return
            self._reload(result.text + ".", result.record_id)

        ctx.run.submit(
            lambda: ctx.store.undo_last_outcome(episode_id),
            done,
            lambda exc: ctx.status.fail(exc, "undo"),
        )
