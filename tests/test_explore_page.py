"""The researcher page at document level, on a small demo cohort."""

from __future__ import annotations

import base64
import io

import pandas as pd
import pytest
from bokeh.document import Document

from tpmap import load_atlas, research
from tpmap.apps.explore import make_document
from tpmap.demo import generate_demo
from tpmap.store import Store

ATLAS = load_atlas()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('explore') / 'demo.db'}"
    store = Store(url)
    generate_demo(store, seed=3, patients=120)
    data = research.load_dataset(store, snapshot=False)
    store.close()
    return data


@pytest.fixture
def page(dataset):
    doc = Document()
    return make_document(doc, dataset=dataset, atlas=ATLAS)


def test_percent_map_uses_every_patient_as_denominator(page, dataset):
    n = len(dataset.cohort)
    assert f"{n} patients in the filtered cohort" in page.legend.text
    table = page.result.table
    assert (table["n_cohort"] == n).all()
    src = page.figure_holder.children[0].select_one({"name": "map-source"})
    row = table.iloc[0]
    i = [
        k
        for k, (m, s) in enumerate(zip(src.data["muscle"], src.data["side"], strict=True))
        if (m, s) == (row["muscle"], row["side"])
    ]
    if page.view.value in {r.view for r in ATLAS.regions if r.muscle == row["muscle"]}:
        assert src.data["value"][i[0]] == pytest.approx(row["pct"])


def test_filters_shrink_the_cohort_and_change_the_map(page, dataset):
    page.conditions.value = ["patellofemoral_pain"]
    n_pfp = int((dataset.cohort["condition"] == "patellofemoral_pain").sum())
    assert f"{n_pfp} patients in the filtered cohort" in page.legend.text
    assert set(page.result.cohort["condition"]) == {"patellofemoral_pain"}
    page.techniques.value = ["electrical"]
    # A mark-level filter keeps the denominator.
    assert f"{n_pfp} patients in the filtered cohort" in page.legend.text
    assert set(page.result.marks["technique"].astype(str)) <= {"electrical"}


def test_small_cells_are_suppressed(page):
    page.k.value = 40
    assert (page.result.table["n_patients"] >= 40).all()
    assert "fewer than 40 patients" in page.legend.text


def test_density_and_counts_modes(page):
    page.mode.active = 1
    fig = page.figure_holder.children[0]
    assert fig.select_one({"name": "density-image"}) is not None
    page.weighting.value = "patient_normalised"
    assert "each patient's marks sum to one" in page.legend.text
    page.mode.active = 2
    assert "number of marks" in page.legend.text


def test_compare_responders_with_non_responders(page):
    page.conditions.value = ["patellofemoral_pain"]
    page.compare.active = True
    t = page.result.table
    assert {"pct_a", "pct_b", "diff", "p", "q"} <= set(t.columns)
    assert "Group A: responder" in page.legend.text
    assert (t["q"] >= t["p"] - 1e-12).all()
    page.mode.active = 1
    assert page.figure_holder.children[0].select_one({"name": "density-image"}) is not None


def test_fold_mirrors_left_affected_patients(page, dataset):
    page.fold.active = True
    marks = page.result.marks
    cohort = dataset.cohort.set_index("patient_id")
    left = cohort.index[cohort["affected_side"] == "left"]
    assert "mirrored to the right" in page.legend.text
    sub = marks.loc[marks["patient_id"].isin(left).to_numpy()]
    orig = dataset.marks.loc[dataset.marks["patient_id"].isin(left).to_numpy()]
    assert (sub["side"].astype(str) != orig["side"].astype(str).to_numpy()).all()


def test_downloads_are_deidentified_and_suppressed(page):
    page.download_marks("parquet")
    d = page.download.data
    assert d["filename"] == ["tpmap-marks.parquet"]
    frame = pd.read_parquet(io.BytesIO(base64.b64decode(d["b64"][0])))
    assert "note" not in frame.columns and "code" not in frame.columns
    assert frame["patient_id"].astype(str).str.fullmatch(r"[0-9a-f]{16}").all()
    per = frame.groupby(["muscle", "side"], observed=True)["patient_id"].nunique()
    assert (per >= 5).all()
    page.download_table()
    csv = base64.b64decode(page.download.data["b64"][0]).decode()
    assert csv.splitlines()[0].startswith("muscle,side,n_marks,n_patients")
    page.download_marks("csv")
    first = pd.read_csv(io.StringIO(base64.b64decode(page.download.data["b64"][0]).decode()))
    assert len(first) == len(frame)
