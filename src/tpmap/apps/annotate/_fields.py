"""A form field bound to its specification in :mod:`tpmap.model`.

The widget only collects what the clinician typed: numbers are plain text inputs, so the
value reaches the server exactly as typed (Bokeh's Spinner would clamp it in the browser
and store 0 for an out-of-range entry, and an autocomplete would replace it with the
highlighted suggestion on Tab). The server checks it against the field's
specification, and a rejected value stays in the field, with the clinical message right
under it, until it is corrected.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bokeh.layouts import column
from bokeh.models import InlineStyleSheet
from bokeh.models.widgets import DatePicker, Div, Select, TextAreaInput, TextInput

from tpmap.apps.annotate._status import ERROR_COLOUR
from tpmap.model import FieldSpec

if TYPE_CHECKING:
    from bokeh.models.widgets.inputs import Options

__all__ = ["BLANK", "FieldInput"]

BLANK = ""
_BLANK_OPTION = (BLANK, "—")

#: Outline of a field whose value was not accepted (the class is set while it is invalid).
_INVALID_CSS = f""":host(.tp-invalid) :is(input, select, textarea) {{
  border-color: {ERROR_COLOUR}; box-shadow: 0 0 0 1px {ERROR_COLOUR};
}}"""
_MESSAGE_STYLE: dict[str, str | None] = {
    "color": ERROR_COLOUR,
    "font-size": "13px",
    "line-height": "16px",
}

Commit = Callable[[str, Any], None]


def _widget(
    spec: FieldSpec, name: str, width: int, options: list[tuple[str, str]] | None, rows: int
) -> Any:
    common: dict[str, Any] = {"title": spec.title, "name": name, "width": width}
    if options is not None or spec.kind in ("choice", "flag"):
        if options is None:
            options = [("yes", "Yes"), ("no", "No")] if spec.kind == "flag" else spec.options()
        choices: Options = [_BLANK_OPTION, *options]
        return Select(options=choices, value=BLANK, **common)
    if spec.kind == "date":
        return DatePicker(value=None, **common)
    # The browser's own limit matches the server's (Bokeh's text area would cut at 500).
    limit: dict[str, Any] = {"max_length": spec.max_length} if spec.max_length else {}
    if rows > 1:
        return TextAreaInput(rows=rows, **limit, **common)
    return TextInput(placeholder=spec.hint, **limit, **common)


class FieldInput:
    """One field of a form: its widget and its message, bound to a :class:`FieldSpec`.

    Parameters
    ----------
    spec
        The field's specification (label, unit, range, choices, message).
    name
        Widget name (also its CSS class ``tp-<name>`` for tests and styles).
    width
        Width in pixels.
    on_commit
        Called with ``(field name, raw value)`` when the clinician changes the value; not
        called when the page itself shows a stored value.
    options
        ``(id, label)`` choices for a select whose choices do not come from the spec (the
        muscles of the atlas, NPRS 0-10).
    rows
        More than one makes a text area (notes).
    """

    def __init__(
        self,
        spec: FieldSpec,
        *,
        name: str,
        width: int,
        on_commit: Commit | None = None,
        options: list[tuple[str, str]] | None = None,
        rows: int = 1,
    ) -> None:
        self.spec = spec
        self.widget = _widget(spec, name, width, options, rows)
        # A model belongs to one document: each field brings its own small stylesheet.
        self.widget.stylesheets = [InlineStyleSheet(css=_INVALID_CSS)]
        self.widget.css_classes = [f"tp-{name}"]
        self.message = Div(
            text="",
            visible=False,
            render_as_text=True,
            name=f"{name}-message",
            width=width,
            styles=_MESSAGE_STYLE,
        )
        self.layout = column(self.widget, self.message, spacing=0, name=f"{name}-field")
        self._on_commit = on_commit
        self._quiet = False
        self.widget.on_change("value", self._changed)

    @property
    def name(self) -> str:
        """The field's column name."""
        return self.spec.name

    @property
    def invalid(self) -> bool:
        """True while the field shows a value that was not accepted."""
        return self.message.visible

    @property
    def value(self) -> Any:
        """What the widget holds now (a string for text and choices, a date or None)."""
        return self.widget.value

    def _changed(self, _attr: str, _old: Any, new: Any) -> None:
        if self._quiet or self._on_commit is None:
            return
        self._on_commit(self.spec.name, new)

    def set(self, value: Any) -> None:
        """Put ``value`` into the widget as if typed (no commit; for tests and resets)."""
        self._quiet = True
        try:
            if self.widget.value != value:
                self.widget.value = value
        finally:
            self._quiet = False

    def show(self, stored: Any, *, keep_invalid: bool = False) -> None:
        """Show a stored value and clear the message.

        ``keep_invalid`` leaves a rejected entry (and its message) in place: the clinician
        is still correcting it, and a save of another field must not wipe what they typed.
        """
        if keep_invalid and self.invalid:
            return
        self.clear()
        if isinstance(self.widget, DatePicker):
            shown: Any = stored if isinstance(stored, dt.date) else None
        elif isinstance(self.widget, Select) and self.spec.kind == "flag":
            shown = {True: "yes", False: "no"}.get(stored, BLANK)
        elif isinstance(self.widget, Select):
            shown = BLANK if stored is None else str(stored)
        else:
            shown = self.spec.format(stored) if self.spec.kind != "text" else (stored or "")
        self.set(shown)

    def fail(self, message: str) -> None:
        """Mark the field invalid with ``message`` under it; the typed value stays."""
        if self.message.text != message:
            self.message.text = message
        self.message.visible = True
        if "tp-invalid" not in self.widget.css_classes:
            self.widget.css_classes = [*self.widget.css_classes, "tp-invalid"]

    def clear(self) -> None:
        """Remove the message and the invalid outline."""
        if self.message.visible:
            self.message.visible = False
        if "tp-invalid" in self.widget.css_classes:
            self.widget.css_classes = [c for c in self.widget.css_classes if c != "tp-invalid"]

    def check(self) -> bool:
        """Check the widget's value against the spec; show the message and return False if bad."""
        try:
            self.spec.clean(self.widget.value)
        except ValueError as exc:
            self.fail(str(exc))
            return False
        self.clear()
        return True
