"""The researcher's starting notebook runs top to bottom against a small demo database."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tpmap.demo import generate_demo
from tpmap.store import Store

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "cohort_analysis.ipynb"


def test_notebook_executes_against_a_demo_database(tmp_path, monkeypatch):
    if (
        not os.path.exists("/usr/bin/chromedriver")
        and os.environ.get("TPMAP_REQUIRE_BROWSER") != "1"
    ):
        pytest.skip("the notebook exports figures through Debian's chromium-driver")
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    generate_demo(Store(url), seed=2, patients=90)
    monkeypatch.setenv("TPMAP_DATABASE_URL", url)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the heatmaps of every view, and the responder comparison
    text = "\n".join(o.get("text", "") for o in outputs)
    assert "90 patients (the denominator)" in text


def test_stored_notebook_has_its_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("outputs") for c in code), "run the notebook and save it with outputs"
