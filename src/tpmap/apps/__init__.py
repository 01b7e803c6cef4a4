"""Bokeh documents, one ``make_document`` per page."""

from __future__ import annotations

import base64
import html
from typing import cast

from bokeh.document import Document
from bokeh.models import ColumnDataSource, CustomJS
from bokeh.models.widgets import Checkbox, Div

__all__ = ["Download", "label_checkboxes", "signed_in_bar", "tag_widgets", "watch_connection"]

# Bokeh draws a Checkbox as an <input> beside a <div> of text, not inside a <label>: a
# screen reader announces "checkbox" with no name. The input gets its label as its name.
_CHECKBOX_JS = """
const apply = (tries) => {
  const views = [...Bokeh.index.all_views()].filter(v => boxes.includes(v.model));
  for (const v of views) {
    const input = v.shadow_el?.querySelector("input[type=checkbox]");
    if (input != null) input.setAttribute("aria-label", v.model.label);
  }
  if (views.length < boxes.length && tries > 0) setTimeout(() => apply(tries - 1), 50);
};
apply(100);
"""


def label_checkboxes(doc: Document) -> None:
    """Name every ``Checkbox`` of ``doc`` by its label for assistive technology."""
    boxes = [m for root in doc.roots for m in root.references() if isinstance(m, Checkbox)]
    if boxes:
        doc.js_on_event("document_ready", CustomJS(args={"boxes": boxes}, code=_CHECKBOX_JS))


def tag_widgets(doc: Document) -> None:
    """Give every named model of ``doc`` a stable CSS class ``tp-<name>``.

    Bokeh renders into shadow DOM; these classes let browser tests and custom styles find
    the widgets. Models that already have classes keep them.
    """
    for root in doc.roots:
        for m in root.references():
            if m.name and hasattr(m, "css_classes") and not m.css_classes:
                m.css_classes = [f"tp-{m.name}"]


def signed_in_bar(name: str, *, width: int | None = None) -> Div:
    """Who is signed in, with a link to sign out (the name is shown as text)."""
    return Div(
        text=(f'Signed in as <b>{html.escape(name)}</b> · <a href="/logout">Sign out</a>'),
        name="signed-in",
        width=width,
        styles={
            "font-size": "13px",
            "color": "#444",
            "white-space": "nowrap",
            "overflow": "hidden",
            "text-overflow": "ellipsis",
        },
        align="end",
    )


# Bokeh shows nothing when the server closes the connection (signed out, idle, disabled, or
# the server stopped): say so over the page, so that nobody keeps typing into a dead page.
_LOST_JS = """
if (document.getElementById("tpmap-lost")) return;
const bar = document.createElement("div");
bar.id = "tpmap-lost";
bar.setAttribute("role", "alert");
bar.style.cssText = "position:fixed;top:0;left:0;right:0;z-index:1000;padding:12px 16px;" +
  "background:#b00020;color:white;font:600 16px sans-serif;text-align:center";
bar.textContent = "This page is no longer connected (signed out, timed out, or the server " +
  "stopped). What you changed after this is not saved. ";
const link = document.createElement("a");
link.href = "/login?next=" + encodeURIComponent(location.pathname);
link.textContent = "Sign in again";
link.style.color = "white";
bar.appendChild(link);
document.body.appendChild(bar);
"""


def watch_connection(doc: Document) -> None:
    """Show a banner over the page when its connection to the server is lost."""
    doc.js_on_event("connection_lost", CustomJS(code=_LOST_JS))


# Python fills the source; the browser turns it into a file the user saves.
_DOWNLOAD_JS = """
const d = source.data;
const col = k => (d instanceof Map ? d.get(k) : d[k]) ?? [];
if (col("b64").length === 0) { return; }
const bytes = Uint8Array.from(atob(col("b64")[0]), c => c.charCodeAt(0));
const blob = new Blob([bytes], {type: col("mime")[0]});
const a = document.createElement("a");
a.href = URL.createObjectURL(blob);
a.download = col("filename")[0];
document.body.appendChild(a);
a.click();
setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
"""


class Download:
    """Send a file from the server to the browser, which saves it (one per page).

    Add :attr:`source` to the document as a root (it is not drawn), then :meth:`send`.
    """

    def __init__(self, name: str = "download") -> None:
        self.source = ColumnDataSource({"filename": [], "b64": [], "mime": []}, name=name)
        self.source.js_on_change("data", CustomJS(args={"source": self.source}, code=_DOWNLOAD_JS))

    @property
    def data(self) -> dict[str, list[str]]:
        """What was sent last (for tests)."""
        # send() writes lists of text only; Bokeh types a source's columns more widely.
        return cast("dict[str, list[str]]", dict(self.source.data))

    def send(self, filename: str, payload: bytes, mime: str) -> None:
        """Have the browser save ``payload`` as ``filename``."""
        self.source.data = {
            "filename": [filename],
            "b64": [base64.b64encode(payload).decode("ascii")],
            "mime": [mime],
        }
