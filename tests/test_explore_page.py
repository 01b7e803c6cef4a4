"""The researcher page at document level, on a small demo cohort.

The page computes on the shared data set's worker thread; without a server session its
results queue until ``page.settle()`` applies them, as the event loop would.
"""

from __future__ import annotations

import base64
import io
import re

import pandas as pd
import pytest
from bokeh.document import Document

from tpmap import load_atlas, research
from tpmap.apps.explore import make_document
from tpmap.demo import generate_demo
from tpmap.store import Store

ATLAS = load_atlas()
EXACT = research.DisclosurePolicy(min_patients=5, perturb=False)


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('explore') / 'demo.db'}"
    store = Store(url)
    generate_demo(store, seed=3, patients=120)
    store.close()
    return url


@pytest.fixture(scope="module")
def dataset(demo_url):
    return research.load_dataset(demo_url, snapshot=False)


def open_page(dataset, policy=EXACT):
    page = make_document(Document(), dataset=dataset, atlas=ATLAS, policy=policy)
    page.settle()
    return page


@pytest.fixture
def page(dataset):
    return open_page(dataset)


def test_percent_map_uses_every_patient_as_denominator(page, dataset):
    n = dataset.n_patients
    assert f"{n} patients in the filtered cohort" in page.legend.text
    table = page.result.table
    assert (table["n_cohort"] == n).all()
    src = page.figure_holder.children[0].select_one({"name": "map-source"})
    row = table.iloc[0]
    shown = dict(zip(zip(src.data["muscle"], src.data["side"], strict=True), src.data["value"],
                     strict=True))  # fmt: skip
    if (row["muscle"], row["side"]) in shown:
        assert shown[(row["muscle"], row["side"])] == pytest.approx(row["pct"])


def test_filters_shrink_the_cohort_and_change_the_map(page, dataset):
    # "other" has fewer than 5 patients here: leaving it out would be refused (a query
    # that differs from its parent by a handful of patients), so it comes along.
    wanted = ["patellofemoral_pain", "other"]
    page.conditions.value = wanted
    page.settle()
    cohort = dataset.cohort
    n_pfp = cohort.loc[cohort["condition"].isin(wanted), "patient_id"].nunique()
    assert f"{n_pfp} patients in the filtered cohort" in page.legend.text
    page.techniques.value = ["electrical"]
    page.settle()
    # A mark filter keeps the denominator.
    assert f"{n_pfp} patients in the filtered cohort" in page.legend.text
    assert (page.result.table["n_cohort"] == n_pfp).all()


def test_a_clinicians_denominator_is_the_patients_they_treated(page, dataset):
    clinician = dataset.clinicians[0]
    page.clinicians.value = [clinician]
    page.settle()
    sessions = dataset.sessions
    treated = sessions.loc[sessions["clinician"] == clinician, "patient_id"].nunique()
    assert treated < dataset.n_patients
    assert f"{treated} patients treated by {clinician}" in page.legend.text
    assert (page.result.table["n_cohort"] == treated).all()


def test_small_cells_are_suppressed(page):
    page.k.value = 40
    page.settle()
    assert (page.result.table["n_patients"] >= 40).all()
    assert "fewer than 40 patients" in page.legend.text


def test_k_below_the_floor_is_refused_on_the_server(page):
    # The value arrives as a document change, as a crafted websocket message would bring it.
    page.k.value = 1
    page.settle()
    assert page.k.value == 5
    assert "cannot be below 5" in page.k_message.text
    assert page.result.request.k == 5
    assert (page.result.table["n_patients"] >= 5).all()
    for bad in (None, -3, 4.5):
        page.k.value = bad
        page.settle()
        assert page.k.value == 5 and page.result.request.k == 5


def test_a_query_with_too_few_patients_is_refused(page):
    page.age_bands.value = ["<18"]
    page.settle()
    assert page.result.refused is not None
    assert page.status.text.startswith("Fewer than 5 patients match these filters")
    assert not any(page.table_source.data.values())
    page.age_bands.value = []
    page.conditions.value = ["patellofemoral_pain"]  # leaves out the 4 "other" patients
    page.settle()
    assert "Adding other to the condition filter" in page.status.text
    assert page.legend.text == ""


def test_density_modes_say_what_the_values_are(page):
    page.mode.active = 1
    page.settle()
    fig = page.figure_holder.children[0]
    assert fig.select_one({"name": "density-image"}) is not None
    bar = fig.select_one({"name": "colour-bar"}).title
    assert re.fullmatch(r"% of \d+ patients with a mark within 1.5 cm", bar)
    page.weighting.value = "patient_normalised"
    page.settle()
    assert "each patient's marks sharing one patient's weight" in page.legend.text
    page.mode.active = 2
    page.settle()
    assert "number of marks" in page.legend.text


def test_compare_responders_with_non_responders(page, dataset):
    page.compare.active = True
    page.settle()
    t = page.result.table
    assert {"pct_a", "pct_b", "diff", "p", "q"} <= set(t.columns)
    assert "Group A: responder" in page.legend.text
    assert "of unknown status are in neither" in page.legend.text
    assert "Benjamini-Hochberg over" in page.legend.text and "not adjusted" in page.legend.text
    titles = {c.field: c.title for c in page.table.columns}
    assert titles["diff_low"] == "CI low (unadj.)" and titles["q"] == "q (BH)"
    assert (t["q"] >= t["p"] - 1e-12).all()
    page.mode.active = 1
    page.settle()
    assert page.figure_holder.children[0].select_one({"name": "density-image"}) is not None


def test_unknown_responders_are_counted_not_dropped(page, dataset):
    page.settle()
    unknown = dataset.cohort.loc[dataset.cohort["responder_nprs"] == "unknown", "patient_id"]
    assert f"unknown status: {unknown.nunique()} patients" in page.legend.text
    assert "4 to 12 weeks after the first session" in page.legend.text


def test_fold_leaves_bilateral_episodes_out_and_says_so(page, dataset):
    page.fold.active = True
    page.settle()
    n_both = int((dataset.cohort["affected_side"] == "both").sum())
    assert f"{n_both} episodes affecting both knees are left out" in page.legend.text
    assert "mirrored to the right" in page.legend.text


def test_displayed_counts_carry_consistent_noise(dataset):
    noisy = open_page(dataset, research.DisclosurePolicy(min_patients=5))
    exact = open_page(dataset)
    a = noisy.result.table.set_index(["muscle", "side"])["n_patients"]
    b = exact.result.table.set_index(["muscle", "side"])["n_patients"]
    assert ((a - b.reindex(a.index)).abs() <= 2).all()
    assert "consistent noise" in noisy.legend.text
    again = open_page(dataset, research.DisclosurePolicy(min_patients=5))
    del again  # another page with another key may differ; the same page is stable:
    noisy.update()
    noisy.settle()
    pd.testing.assert_series_equal(
        noisy.result.table.set_index(["muscle", "side"])["n_patients"], a
    )


@pytest.fixture
def researcher(demo_url):
    """The demo database's store and a signed-in researcher."""
    store = Store(demo_url)
    if store.principal("rhea") is None:
        store.add_user("rhea", "a password for tests", roles=("researcher",), user="tests")
    yield store, store.principal("rhea")
    store.close()


def test_downloads_are_deidentified_suppressed_and_recorded(dataset, researcher):
    store, user = researcher
    before = len(store.audit_entries(action="export"))
    page = make_document(
        Document(), dataset=dataset, atlas=ATLAS, policy=EXACT, store=store, user=user
    )
    page.settle()
    page.download_marks("parquet")
    page.settle()
    d = page.download.data
    assert d["filename"] == ["tpmap-marks.parquet"]
    frame = pd.read_parquet(io.BytesIO(base64.b64decode(d["b64"][0])))
    assert set(frame.columns) <= set(research.EXPORT_COLUMNS)
    assert frame["patient_id"].astype(str).str.fullmatch(r"[0-9a-f]{16}").all()
    assert "session_date" not in frame.columns and "days_since_episode_start" in frame.columns
    per = frame.groupby(["muscle", "side"], observed=True)["patient_id"].nunique()
    assert (per >= 5).all()
    page.download_table()
    page.settle()
    csv = base64.b64decode(page.download.data["b64"][0]).decode()
    assert csv.splitlines()[0].startswith("muscle,side,n_marks,n_patients")
    page.download_marks("csv")
    page.settle()
    first = pd.read_csv(io.StringIO(base64.b64decode(page.download.data["b64"][0]).decode()))
    assert len(first) == len(frame)
    # Each export is in the audit trail, under the researcher's name, with its filters,
    # k and row count; and the trail still verifies.
    exports = store.audit_entries(action="export")[before:]
    assert [(e.actor, e.target) for e in exports] == [
        ("rhea", "marks"),
        ("rhea", "muscle_table"),
        ("rhea", "marks"),
    ]
    assert exports[0].after["rows"] == len(frame) and exports[0].after["k"] == 5
    assert "filters" in exports[0].after and exports[1].after["rows"] == len(csv.splitlines()) - 1
    assert store.verify_audit().ok


def test_an_export_that_cannot_be_recorded_is_not_sent(dataset, researcher):
    store, user = researcher
    page = make_document(
        Document(), dataset=dataset, atlas=ATLAS, policy=EXACT, store=store, user=user
    )
    page.settle()
    store.set_user_active("rhea", False, user="tests")
    try:
        page.download_marks("csv")
        page.settle()
        assert page.download.data.get("b64", []) == []
        assert "could not be prepared" in page.status.text
    finally:
        store.set_user_active("rhea", True, user="tests")


def test_pages_share_one_data_set_loaded_off_the_page(demo_url, tmp_path):
    shared = research.SharedDataset(demo_url, snapshot=tmp_path / "snap")
    try:
        first = make_document(Document(), research=shared, atlas=ATLAS, policy=EXACT)
        # The page exists before the data: it says it is loading.
        assert "Loading the research data" in first.status.text or first.result is None
        second = make_document(Document(), research=shared, atlas=ATLAS, policy=EXACT)
        first.settle()
        second.settle()
        assert shared.loads == 1
        assert first.result is not None and second.result is not None
        assert first.shared.data is second.shared.data
    finally:
        shared.close()


def test_a_kind_of_structure_filters_the_marks_and_keeps_the_denominator(page, dataset):
    n = page.result.table["n_cohort"].iloc[0]
    page.view.value = "lateral_right"
    page.kinds.value = ["fascia"]  # the iliotibial band
    page.settle()
    table = page.result.table
    shown = table.loc[table["n_patients"].notna() & (table["n_patients"] > 0), "muscle"]
    assert set(shown) <= {"iliotibial_band"}
    assert (table["n_cohort"] == n).all()  # a mark filter: the denominator stays


def test_the_structures_layer_and_a_forged_layer(page):
    page.layer.value = "structures"
    page.settle()
    assert page.result.request.layer == "structures"
    page.layer.value = "<script>"  # not a layer: the superficial one is drawn
    page.settle()
    assert page.result.request.layer == "superficial"
