"""The session's marks as a table; choosing a row selects that mark."""

from __future__ import annotations

from typing import Any

from bokeh.models import ColumnDataSource
from bokeh.models.widgets import DataTable, TableColumn

from tpmap import model
from tpmap.apps.annotate._context import Context
from tpmap.apps.annotate._state import Change
from tpmap.plotting import VIEW_TITLES, column_data

__all__ = ["MarksTable"]


class MarksTable:
    """A row per mark of the session, in the order they were placed."""

    def __init__(self, ctx: Context, *, width: int, height: int) -> None:
        self.ctx = ctx
        self.source = ColumnDataSource(column_data(self._data([])), name="marks-table-source")
        self.table = DataTable(
            source=self.source,
            columns=[
                TableColumn(field="n", title="#", width=30),
                TableColumn(field="muscle", title="Muscle", width=170),
                TableColumn(field="view", title="View", width=80),
                TableColumn(field="technique", title="Technique", width=90),
                TableColumn(field="depth", title="Depth", width=50),
            ],
            width=width - 10,
            height=height,
            index_position=None,
            name="marks-table",
        )
        self.layout = self.table
        self._writing = False
        # Drawn only while its tab is open: a table redrawn behind another tab on every tap
        # cost the browser ~10 ms and the tap two messages before the saved mark showed.
        self.shown = False
        self._stale = False
        self.source.selected.on_change("indices", self._chosen)
        ctx.state.listen(self._on_state)

    def show(self, shown: bool) -> None:
        """The table's tab is open (``True``) or closed; an open table is kept current."""
        self.shown = shown
        if shown and self._stale:
            self.refresh()

    def resize(self, width: int, height: int) -> None:
        """Fit the table into the panel."""
        if self.table.width != width - 10:
            self.table.width = width - 10
        if self.table.height != height:
            self.table.height = height

    def _data(self, marks: list[Any]) -> dict[str, list[Any]]:
        technique = model.MARK_FIELDS["technique"]
        return {
            "id": [m.id for m in marks],
            "n": list(range(1, len(marks) + 1)),
            "muscle": [self.ctx.label(m.muscle, m.side) for m in marks],
            "view": [VIEW_TITLES[m.view] for m in marks],
            "technique": [technique.format(m.technique) for m in marks],
            "depth": ["" if m.depth_mm is None else f"{m.depth_mm:g} mm" for m in marks],
        }

    def _on_state(self, _change: Change) -> None:
        if self.shown:
            self.refresh()
        else:
            self._stale = True

    def refresh(self) -> None:
        """List the session's marks and select the selected one."""
        self._stale = False
        state = self.ctx.state
        ordered = sorted(state.marks.values(), key=lambda m: m.id)
        data = self._data(ordered)
        ids = data["id"]
        selected = [ids.index(state.selected)] if state.selected in ids else []
        self._writing = True
        try:
            if dict(self.source.data) != data:
                self.source.data = column_data(data)
            if list(self.source.selected.indices) != selected:
                self.source.selected.indices = selected
        finally:
            self._writing = False

    def _chosen(self, _attr: str, _old: list[int], new: list[int]) -> None:
        if self._writing or not new:
            return
        ids = self.source.data["id"]
        index = new[0]
        if isinstance(index, int) and 0 <= index < len(ids):
            self.ctx.state.select(ids[index])
