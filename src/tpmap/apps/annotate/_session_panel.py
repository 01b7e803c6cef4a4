"""The session's own readings: NPRS before and after, pressure pain thresholds, adverse events."""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from bokeh.layouts import column, row
from bokeh.models.widgets import Button, Div, Select

from tpmap import model
from tpmap.apps.annotate._context import Context
from tpmap.apps.annotate._fields import BLANK, FieldInput

if TYPE_CHECKING:
    from bokeh.models.ui import UIElement
    from bokeh.models.widgets.inputs import Options

__all__ = ["SessionPanel"]


def _lines(items: list[str], empty: str) -> str:
    """A list of typed text as HTML lines: every item escaped, never markup."""
    if not items:
        return f"<i>{html.escape(empty)}</i>"
    return "".join(f"<div>{html.escape(text)}</div>" for text in items)


class _Entry:
    """A small form that adds one reading to the session, and lists and removes them."""

    def __init__(
        self,
        ctx: Context,
        fields: dict[str, FieldInput],
        *,
        prefix: str,
        add: Callable[[int, dict[str, Any]], Any],
        list_: Callable[[int], list[Any]],
        remove: Callable[[int], Any],
        describe: Callable[[Any], str],
        empty: str,
        what: str,
        width: int,
        rows: tuple[tuple[str, ...], ...],
    ) -> None:
        self.ctx, self.fields = ctx, fields
        self._add, self._list, self._remove, self._describe = add, list_, remove, describe
        self.what, self.empty, self.rows = what, empty, rows
        self.add_button = Button(label="Add", name=f"add-{prefix}", width=60, align="end")
        self.listing = Div(text=_lines([], empty), name=f"{prefix}-list", width=width - 20)
        self.pick = Select(
            title="Entered by mistake?", options=[], name=f"{prefix}-pick", width=width - 116
        )
        self.remove_button = Button(label="Remove", name=f"remove-{prefix}", width=80, align="end")
        self.add_button.on_click(self.add)
        self.remove_button.on_click(self.remove)

    def show(self, items: list[Any]) -> None:
        """List the session's readings."""
        labels = [(str(i.id), self._describe(i)) for i in items]
        text = _lines([label for _, label in labels], self.empty)
        if self.listing.text != text:
            self.listing.text = text
        options: Options = [(BLANK, "—"), *labels]
        self.pick.options = options
        self.pick.value = BLANK

    def add(self) -> None:
        """Store the reading typed into the fields (each bad field gets its message)."""
        ctx = self.ctx
        session_id = ctx.state.session_id
        if session_id is None:
            ctx.status.say("Choose or start a session first: nothing was saved.", error=True)
            return
        if not all([f.check() for f in self.fields.values()]):
            bad = [f.message.text for f in self.fields.values() if f.invalid]
            ctx.status.say("Not saved: " + " ".join(bad), error=True)
            return
        values = {name: f.value for name, f in self.fields.items()}

        def work() -> list[Any]:
            self._add(session_id, values)
            return self._list(session_id)

        def done(items: list[Any]) -> None:
            self.show(items)
            for f in self.fields.values():
                f.show(None)
            ctx.status.say(f"{self.what} saved.")

        def failed(exc: Exception) -> None:
            for key, message in ctx.status.fail(exc, "entry").items():
                if key in self.fields:
                    self.fields[key].fail(message)

        ctx.run.submit(work, done, failed)

    def remove(self) -> None:
        """Remove the reading chosen as entered by mistake."""
        ctx = self.ctx
        session_id = ctx.state.session_id
        choice = self.pick.value
        if session_id is None or not choice or not choice.isdigit():
            ctx.status.say(f"Choose the {self.what.lower()} to remove first.", error=True)
            return
        reading = int(choice)

        def work() -> list[Any]:
            self._remove(reading)
            return self._list(session_id)

        def done(items: list[Any]) -> None:
            self.show(items)
            ctx.status.say(f"{self.what} removed.")

        ctx.run.submit(work, done, lambda exc: ctx.status.fail(exc, "removal"))

    @property
    def layout(self) -> Any:
        """The fields (the Add button ends the last row), the list and the remove picker."""
        lines: list[list[UIElement]] = [
            [self.fields[name].layout for name in names] for names in self.rows
        ]
        lines[-1].append(self.add_button)
        return column(
            *(row(*line, spacing=6) for line in lines),
            self.listing,
            row(self.pick, self.remove_button, spacing=6),
        )


class SessionPanel:
    """NPRS before and after, pressure pain thresholds and adverse events of the session."""

    def __init__(self, ctx: Context, *, width: int, top: list[Any] | None = None) -> None:
        self.ctx = ctx
        store = ctx.store
        specs = model.SESSION_FIELD_SPECS
        self.nprs = {
            name: FieldInput(
                specs[name],
                name=name.replace("_", "-"),
                width=120,
                on_commit=self._commit,
                options=[(str(i), str(i)) for i in range(11)],
            )
            for name in ("nprs_before", "nprs_after")
        }
        ppt, ae = model.PPT_FIELDS, model.ADVERSE_EVENT_FIELDS
        self.ppts = _Entry(
            ctx,
            {
                "site": FieldInput(ppt["site"], name="ppt-site", width=width - 20),
                "side": FieldInput(ppt["side"], name="ppt-side", width=90),
                "kg_cm2": FieldInput(ppt["kg_cm2"], name="ppt-value", width=150),
            },
            rows=(("site",), ("kg_cm2", "side")),
            prefix="ppt",
            add=lambda sid, v: store.add_pressure_pain_threshold(sid, v),
            list_=store.list_pressure_pain_thresholds,
            remove=lambda i: store.delete_pressure_pain_threshold(i),
            describe=lambda p: f"{p.site}{f' ({p.side})' if p.side else ''}: {p.kg_cm2:g} kg/cm²",
            empty="No pressure pain thresholds yet.",
            what="Pressure pain threshold",
            width=width,
        )
        self.ppts.fields["site"].widget.placeholder = "e.g. VMO"
        self.aes = _Entry(
            ctx,
            {
                "type": FieldInput(ae["type"], name="ae-type", width=(width - 28) // 2),
                "severity": FieldInput(ae["severity"], name="ae-severity", width=(width - 28) // 2),
                "note": FieldInput(ae["note"], name="ae-note", width=width - 96),
            },
            rows=(("type", "severity"), ("note",)),
            prefix="ae",
            add=lambda sid, v: store.add_adverse_event(sid, v),
            list_=store.list_adverse_events,
            remove=lambda i: store.delete_adverse_event(i),
            describe=lambda a: (
                f"{ae['type'].label_of(a.type)} ({a.severity})" + (f": {a.note}" if a.note else "")
            ),
            empty="No adverse events recorded.",
            what="Adverse event",
            width=width,
        )
        self.aes.fields["note"].widget.title = "What happened (needed for Other)"
        self.layout = column(
            *(top or []),
            row(*(f.layout for f in self.nprs.values()), spacing=8),
            Div(text="<b>Pressure pain thresholds</b>"),
            self.ppts.layout,
            Div(text="<b>Adverse events</b>"),
            self.aes.layout,
            width=width,
            name="session-panel",
        )

    def show(self, session: Any, ppts: list[Any], aes: list[Any]) -> None:
        """Show an opened session's readings."""
        for name, f in self.nprs.items():
            f.show(None if session is None else getattr(session, name))
        self.ppts.show(ppts)
        self.aes.show(aes)

    def _commit(self, name: str, raw: Any) -> None:
        ctx = self.ctx
        session_id = ctx.state.session_id
        field = self.nprs[name]
        if session_id is None:
            ctx.status.say("Choose or start a session first: nothing was saved.", error=True)
            return
        if not field.check():
            ctx.status.say(f"Not saved: {field.message.text}", error=True)
            return

        def saved(s: Any) -> None:
            value = getattr(s, name)
            ctx.status.say(
                f"Saved {field.spec.label}: {value}"
                if value is not None
                else f"Cleared {field.spec.label}."
            )

        def failed(exc: Exception) -> None:
            errors: Mapping[str, str] = ctx.status.fail(exc, "change")
            if name in errors:
                field.fail(errors[name])

        ctx.run.submit(
            lambda: ctx.store.update_session(session_id, {name: raw or None}),
            saved,
            failed,
        )
