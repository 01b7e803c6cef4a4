"""Points on the diagram for tests: inside a muscle, and the fields of a mark placed there."""

from __future__ import annotations

from typing import Any

from tpmap import load_atlas

ATLAS = load_atlas()


def inside(view: str, muscle: str, side: str, layer: str = "superficial") -> tuple[float, float]:
    """A point well inside ``muscle`` on ``side`` of ``view``."""
    p = ATLAS.region(view, muscle, side, layer).polygon.representative_point()
    return p.x, p.y


def mark_fields(view: str, muscle: str, side: str, layer: str = "superficial") -> dict[str, Any]:
    """The position fields of a mark placed inside ``muscle``."""
    x, y = inside(view, muscle, side, layer)
    return {
        "view": view,
        "x": x,
        "y": y,
        "muscle": muscle,
        "side": side,
        "layer": layer,
        "atlas_version": ATLAS.version,
    }
