"""The status line and the words of every message the page shows."""

from __future__ import annotations

import logging
import secrets

from bokeh.models.widgets import Div

from tpmap.auth import AccessDenied
from tpmap.model import ValidationError
from tpmap.store import NotFoundError

__all__ = ["ERROR_COLOUR", "StatusLine", "describe"]

log = logging.getLogger("tpmap.annotate")

ERROR_COLOUR = "#b00020"
_STYLE = {
    "font-size": "15px",
    "line-height": "20px",
    # Two lines at most, always in the same place: a long message never widens the page.
    "overflow": "hidden",
    "display": "-webkit-box",
    "-webkit-line-clamp": "2",
    "-webkit-box-orient": "vertical",
    "overflow-wrap": "anywhere",
}


def describe(exc: Exception, what: str = "change") -> tuple[str, dict[str, str]]:
    """The clinician's words for a failed call, and the message of each field it names.

    A rejected value gives the model's clinical messages; a stored record that is not there
    (another tab deleted it, or the id was forged) gives "not found"; anything else gives a
    short reference, and its details go to the server log only, never to the page.
    """
    if isinstance(exc, ValidationError):
        return "Not saved: " + " ".join(exc.errors.values()), dict(exc.errors)
    if isinstance(exc, AccessDenied):
        log.warning("access denied: %s", exc)
        return "Not saved: you are signed out or may not do this. Sign in again.", {}
    if isinstance(exc, NotFoundError):
        log.info("not found: %s", exc)
        return "Not found: that record is not (or no longer) in this clinic's records.", {}
    ref = secrets.token_hex(3)
    log.error("failed %s (reference %s)", what, ref, exc_info=exc)
    return (
        f"Not saved: the server could not complete this {what} (reference {ref}). "
        "Nothing was changed; try again.",
        {},
    )


class StatusLine:
    """One line (two at most) for what just happened, in a place of its own."""

    def __init__(self, text: str = "") -> None:
        self.div = Div(
            text=text,
            name="status",
            render_as_text=True,  # messages quote patient codes and sites: text, never HTML
            height=40,
            styles={**_STYLE, "color": "#222"},
            html_attributes={"role": "status", "aria-live": "polite"},
        )

    @property
    def text(self) -> str:
        """The message shown now."""
        return self.div.text

    @property
    def is_error(self) -> bool:
        """True when the message shown is an error."""
        styles = self.div.styles  # the dict say() set (Bokeh would also take a Styles model)
        return isinstance(styles, dict) and styles.get("color") == ERROR_COLOUR

    def say(self, text: str, *, error: bool = False) -> None:
        """Show ``text`` (replacing the last message); errors in red and bold."""
        if self.div.text != text:
            self.div.text = text
        styles: dict[str, str | None] = {
            **_STYLE,
            "color": ERROR_COLOUR if error else "#222",
            "font-weight": "600" if error else "400",
        }
        if self.div.styles != styles:
            self.div.styles = styles

    def fail(self, exc: Exception, what: str = "change") -> dict[str, str]:
        """Show the message for a failed call; return the per-field messages."""
        message, errors = describe(exc, what)
        self.say(message, error=True)
        return errors
