"""Bokeh documents, one ``make_document`` per page."""

from __future__ import annotations

import html

from bokeh.document import Document
from bokeh.models import CustomJS, Div

__all__ = ["signed_in_bar", "tag_widgets", "watch_connection"]


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
