"""Tabs that assistive technology announces as tabs, and a keyboard can work.

Bokeh draws tab headers as plain ``div``s (focusable, but without roles, state or key
handling). This script gives them the WAI-ARIA tabs pattern: ``role="tablist"``,
``role="tab"`` with ``aria-selected``, ``role="tabpanel"`` on the content, Enter or Space to
open a tab and the arrow keys to move between them. It re-applies itself whenever Bokeh
redraws the headers.
"""

from __future__ import annotations

from typing import Any

from bokeh.document import Document
from bokeh.models import CustomJS, Tabs

__all__ = ["accessible_tabs", "numeric_keyboards"]

_JS = """
const apply = (view) => {
  const wrapper = view.headers_wrapper_el, headers = view.header_els ?? [];
  if (wrapper == null) return;
  wrapper.setAttribute("role", "tablist");
  wrapper.setAttribute("aria-label", label);
  headers.forEach((el, i) => {
    const active = i === view.model.active;
    el.setAttribute("role", "tab");
    el.setAttribute("aria-selected", active ? "true" : "false");
    el.tabIndex = active ? 0 : -1;
    if (!el.__tpmap_keys) {
      el.__tpmap_keys = true;
      el.addEventListener("keydown", (ev) => {
        const n = headers.length;
        if (ev.key === "Enter" || ev.key === " ") {
          ev.preventDefault(); view.change_active(i);
        } else if (ev.key === "ArrowRight" || ev.key === "ArrowLeft") {
          ev.preventDefault();
          const j = (i + (ev.key === "ArrowRight" ? 1 : n - 1)) % n;
          view.change_active(j); view.header_els[j]?.focus();
        }
      });
    }
  });
  for (const [i, child] of view.child_views.entries()) {
    child.el.setAttribute("role", "tabpanel");
    child.el.setAttribute("aria-label", view.model.tabs[i].title);
  }
};
const find = (tries) => {
  const view = [...Bokeh.index.all_views()].find(v => v.model === tabs);
  if (view == null || view.headers_wrapper_el == null) {
    if (tries > 0) setTimeout(() => find(tries - 1), 50);
    return;
  }
  apply(view);
  if (!view.__tpmap_observer) {
    view.__tpmap_observer = new MutationObserver(() => apply(view));
    view.__tpmap_observer.observe(view.headers_wrapper_el, {childList: true});
  }
};
find(100);
"""


def accessible_tabs(doc: Document, tabs: Tabs, label: str) -> None:
    """Give ``tabs`` the roles, states and keys of the WAI-ARIA tabs pattern in the browser."""
    script = CustomJS(args={"tabs": tabs, "label": label}, code=_JS)
    tabs.js_on_change("active", script)
    doc.js_on_event("document_ready", script)


_NUMERIC_JS = """
const apply = (tries) => {
  const views = [...Bokeh.index.all_views()].filter(v => widgets.includes(v.model));
  if (views.length < widgets.length && tries > 0) {
    setTimeout(() => apply(tries - 1), 50);
  }
  for (const v of views) {
    if (v.input_el != null) v.input_el.inputMode = "decimal";
  }
};
apply(100);
"""


def numeric_keyboards(doc: Document, widgets: list[Any]) -> None:
    """Ask tablets for a number keyboard in these text inputs (the value stays free text)."""
    if widgets:
        doc.js_on_event("document_ready", CustomJS(args={"widgets": widgets}, code=_NUMERIC_JS))
