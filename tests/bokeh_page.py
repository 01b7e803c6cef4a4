"""Helpers for driving Bokeh pages in a real browser (Bokeh 3 renders into shadow DOM)."""

from __future__ import annotations

from typing import Any

_SCREEN = """([name, x, y]) => {
  const v = [...Bokeh.index.all_views()].find(v => v.model.name === name && v.frame);
  const r = v.el.getBoundingClientRect();
  return [r.left + v.frame.x_scale.compute(x), r.top + v.frame.y_scale.compute(y)];
}"""
_MODEL = """([name, attr]) => {
  const m = Bokeh.documents[0].get_model_by_name(name);
  return m ? m[attr] : null;
}"""
_COLUMN = """([name, col]) => {
  const d = Bokeh.documents[0].get_model_by_name(name).data;
  const v = d instanceof Map ? d.get(col) : d[col];
  return Array.from(v ?? []);
}"""


def wait_for_bokeh(page: Any) -> None:
    """Wait until the page's Bokeh document is drawn."""
    page.locator("div.bk-Canvas").first.wait_for()
    page.wait_for_function(
        "() => window.Bokeh && Bokeh.index && [...Bokeh.index.all_views()].length"
    )


def screen_xy(page: Any, figure: str, x: float, y: float) -> tuple[float, float]:
    """Page pixel coordinates of diagram point (x, y) on the figure named ``figure``."""
    sx, sy = page.evaluate(_SCREEN, [figure, x, y])
    return sx, sy


def tap(page: Any, figure: str, x: float, y: float) -> None:
    """Click the diagram at diagram coordinates (x, y)."""
    page.mouse.click(*screen_xy(page, figure, x, y))


def model_attr(page: Any, name: str, attr: str) -> Any:
    """An attribute of the Bokeh model named ``name`` as the browser sees it."""
    return page.evaluate(_MODEL, [name, attr])


def column(page: Any, source: str, col: str) -> list[Any]:
    """One column of the ColumnDataSource named ``source`` as the browser holds it."""
    return page.evaluate(_COLUMN, [source, col])
