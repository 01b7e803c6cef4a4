"""How big each part of the clinician page is, from the size of the browser window.

The diagrams are where a finger taps, so they get all the height the window allows; the
side panel takes the rest of the width, never less than it needs to show its fields.
The browser reports its window size when the page opens and when it changes (a tablet
turned round); the server computes the plan here and sets the sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["PAGE_MARGIN", "REPORT_VIEWPORT_JS", "LayoutPlan", "plan_layout"]

#: Narrower than this, the pickers take two rows.
NARROW = 1000
PANEL_MIN = 340
PANEL_MAX = 600
_HEADER_ROW = 60  # a row of pickers (title + input)
_CONTROLS = 40  # the view switch above the diagrams
_STATUS = 44  # the status line: two lines of text
PAGE_MARGIN = 16  # page padding and widget margins, each side
_GAP = 12  # between the diagrams and the panel
_FIGURE_MIN = 300

#: Sent by the browser: its window size now and whenever it changes (debounced).
REPORT_VIEWPORT_JS = """
const send = () => {
  const w = Math.round(window.innerWidth), h = Math.round(window.innerHeight);
  const d = source.data, get = k => (d instanceof Map ? d.get(k) : d[k]) ?? [];
  if (get("width")[0] !== w || get("height")[0] !== h) {
    source.data = {width: [w], height: [h]};
  }
};
send();
let timer = null;
window.addEventListener("resize", () => { clearTimeout(timer); timer = setTimeout(send, 150); });
"""


@dataclass(frozen=True, slots=True)
class LayoutPlan:
    """Sizes, in CSS pixels, of the parts of the clinician page for one window size."""

    width: int
    height: int
    figure_height: int
    panel_width: int
    table_height: int
    narrow: bool


def plan_layout(width: int, height: int, pair_width: Callable[[int], int]) -> LayoutPlan:
    """Plan the page for a ``width`` x ``height`` window.

    Parameters
    ----------
    width, height
        The browser window's inner size.
    pair_width
        The width the two diagrams shown side by side take at a given figure height.

    Returns
    -------
    LayoutPlan
        The tallest figures that fit both the height and (with the panel at its minimum
        width) the width; the panel gets the width left over.

    Examples
    --------
    >>> plan = plan_layout(1024, 768, lambda h: int(0.7 * h))
    >>> plan.figure_height, plan.panel_width, plan.narrow
    (592, 566, False)
    """
    width = max(320, min(int(width), 10_000))
    height = max(320, min(int(height), 10_000))
    narrow = width < NARROW
    header = _HEADER_ROW * (2 if narrow else 1)
    by_height = height - header - _CONTROLS - _STATUS - 2 * PAGE_MARGIN
    room = width - 2 * PAGE_MARGIN - _GAP - PANEL_MIN
    figure_height = max(_FIGURE_MIN, by_height)
    # The tallest height whose pair of views still fits the room beside the panel.
    while figure_height > _FIGURE_MIN and pair_width(figure_height) > room:
        figure_height -= 4
    used = pair_width(figure_height)
    panel = width - 2 * PAGE_MARGIN - _GAP - used
    panel_width = max(PANEL_MIN, min(PANEL_MAX, panel))
    return LayoutPlan(
        width=width,
        height=height,
        figure_height=figure_height,
        panel_width=panel_width,
        table_height=max(200, figure_height - 60),
        narrow=narrow,
    )
