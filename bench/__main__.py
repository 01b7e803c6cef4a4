"""Run the benchmarks: ``python -m bench [name ...]`` (all by default)."""

from __future__ import annotations

import importlib
import sys

SUITES = ["atlas", "density", "load", "annotate", "explore", "concurrent"]


def main(argv: list[str]) -> int:
    names = argv or SUITES
    for name in names:
        module = importlib.import_module(f"bench.bench_{name}")
        module.main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
