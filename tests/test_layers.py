"""Layers point down: the core (model, auth, atlas, store, research, reports' data, demo)
imports no Bokeh, so notebooks, the CLI and other programs can use it without a server."""

from __future__ import annotations

import subprocess
import sys

CORE = [
    "tpmap.model",
    "tpmap.auth",
    "tpmap.atlas",
    "tpmap.store",
    "tpmap.research",
    "tpmap.progress",
    "tpmap.questionnaires",
    "tpmap.report",
    "tpmap.demo",
]


def test_the_core_imports_no_bokeh() -> None:
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in CORE)
        + "print(sorted(m for m in sys.modules if m == 'bokeh' or m.startswith('bokeh.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
