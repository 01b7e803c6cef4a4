"""Printing a benchmark's rows: case, tpmap's figure, the alternative's."""

from __future__ import annotations

__all__ = ["print_rows"]


def print_rows(title: str, rows: list[tuple[str, str, str]], alternative: str = "alternative"):
    """Print ``rows`` under ``title`` as aligned columns."""
    width = max([len(r[0]) for r in rows] + [4])
    value = max([len(r[1]) for r in rows] + [5])
    print(f"\n{title}")
    print(f"{'case':<{width}} {'tpmap':>{value}}   {alternative}")
    for case, ours, theirs in rows:
        print(f"{case:<{width}} {ours:>{value}}   {theirs}")
