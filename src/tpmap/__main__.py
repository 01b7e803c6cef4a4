"""``python -m tpmap`` runs the command line."""

from __future__ import annotations

from tpmap.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
