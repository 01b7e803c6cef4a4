"""Bokeh documents, one ``make_document`` per page."""

from __future__ import annotations

from bokeh.document import Document

__all__ = ["tag_widgets"]


def tag_widgets(doc: Document) -> None:
    """Give every named model of ``doc`` a stable CSS class ``tp-<name>``.

    Bokeh renders into shadow DOM; these classes let browser tests and custom styles find
    the widgets. Models that already have classes keep them.
    """
    for root in doc.roots:
        for m in root.references():
            if m.name and hasattr(m, "css_classes") and not m.css_classes:
                m.css_classes = [f"tp-{m.name}"]
