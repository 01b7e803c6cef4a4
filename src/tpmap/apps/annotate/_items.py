"""Item answers for a questionnaire instrument: the clinician enters the patient's answers
and the total appears in the Outcomes panel's score field, computed by the instrument's
published rule (:mod:`tpmap.questionnaires`).

The total is only a suggestion in the score field: nothing is stored until the clinician
presses Add score (or Save correction), so the score that is saved is always the one shown.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bokeh.layouts import column
from bokeh.models import InlineStyleSheet
from bokeh.models.widgets import Button, Div, Select

from tpmap import model
from tpmap.questionnaires import QUESTIONNAIRES, Item, Questionnaire

__all__ = ["ItemAnswers"]

UNANSWERED = ""
#: The list of items scrolls inside the panel; the rest of the panel stays where it is.
_SCROLL_CSS = ":host { overflow-y: auto; overflow-x: hidden; }"
_BOX_HEIGHT = 260


class ItemAnswers:
    """The items of the chosen instrument's questionnaire, and the total they give.

    Parameters
    ----------
    width
        The panel's width in pixels.
    on_total
        Called with the total whenever the answers give one.
    on_open
        Called with True when the items are shown, False when they are hidden.
    """

    def __init__(
        self,
        *,
        width: int,
        on_total: Callable[[float], None],
        on_open: Callable[[bool], None],
    ) -> None:
        self._on_total = on_total
        self._on_open = on_open
        self.questionnaire: Questionnaire | None = None
        self.selects: list[Select] = []
        self.width = width
        self.toggle = Button(
            label="Enter item answers", name="answer-items", width=170, visible=False
        )
        self.total = Div(
            text="", name="items-total", width=width - 20, render_as_text=True, visible=False
        )
        self.box = column(
            Div(visible=False),  # the items come when opened (an empty layout gets a warning)
            name="items", height=_BOX_HEIGHT, width=width - 10, visible=False,
            stylesheets=[InlineStyleSheet(css=_SCROLL_CSS)],  # a model per document
        )  # fmt: skip
        self.layout = column(self.toggle, self.total, self.box, name="items-block")
        self.toggle.on_click(self._toggled)

    @property
    def is_open(self) -> bool:
        """True while the item answers are shown."""
        return self.box.visible

    def resize(self, width: int) -> None:
        """Fit the items into a panel ``width`` pixels wide."""
        self.width = width
        for widget, w in ((self.total, width - 20), (self.box, width - 10)):
            if widget.width != w:
                widget.width = w
        for select in self.selects:
            if select.width != width - 40:
                select.width = width - 40

    def show_instrument(self, instrument: str | None) -> None:
        """Offer item answers when ``instrument`` has a questionnaire (closing any open one)."""
        questionnaire = QUESTIONNAIRES.get(instrument or "")
        if questionnaire is not self.questionnaire:
            self.close()
            self.questionnaire = questionnaire
        if self.toggle.visible != (questionnaire is not None):
            self.toggle.visible = questionnaire is not None

    def close(self) -> None:
        """Hide the items (their answers are dropped: they were only a way to the total)."""
        if self.box.visible:
            self.box.visible = False
            self.total.visible = False
            self.box.children = []
            self.selects = []
            self.toggle.label = "Enter item answers"
            self._on_open(False)

    def _toggled(self) -> None:
        if self.box.visible:
            self.close()
        elif self.questionnaire is not None:
            self._open(self.questionnaire)

    def _open(self, questionnaire: Questionnaire) -> None:
        def choices(item: Item) -> list[str | tuple[Any, str]]:
            return [(UNANSWERED, "—"), *((f"{p:g}", f"{a} ({p:g})") for a, p in item.answers)]

        self.selects = [
            Select(
                title=f"{item.id}. {item.label}",
                options=choices(item),
                value=UNANSWERED,
                width=self.width - 40,
                name=f"item-{item.id}",
            )
            for item in questionnaire.items
        ]
        for select in self.selects:
            select.on_change("value", lambda _a, _o, _n: self.recompute())
        self.box.children = list(self.selects)
        self.box.visible = True
        self.total.visible = True
        self.toggle.label = "Hide item answers"
        self.recompute()
        self._on_open(True)

    def answers(self) -> dict[str, str | None]:
        """Item id to the answer's points as the page holds them (None: unanswered)."""
        if self.questionnaire is None:
            return {}
        return {
            item.id: (select.value or None)
            for item, select in zip(self.questionnaire.items, self.selects, strict=False)
        }

    def recompute(self) -> None:
        """Show the total the answers give, and hand it to the score field; or say what is
        missing (the score field then keeps what it holds)."""
        questionnaire = self.questionnaire
        if questionnaire is None or not self.box.visible:
            return
        answers = self.answers()
        answered = sum(1 for v in answers.values() if v is not None)
        try:
            total = questionnaire.total(answers)
        except model.ValidationError as exc:
            self.total.text = exc.errors.get("answers", str(exc))
            return
        n = len(questionnaire.items)
        self.total.text = (
            f"{questionnaire.label} total from {answered} of {n} answers: {total:g} "
            "(in the Score field; Add score saves it)."
        )
        self._on_total(total)
