"""``python -m tpmap`` runs the command line."""

from __future__ import annotations

from tpmap.cli import main

raise SystemExit(main())
