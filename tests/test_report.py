"""The session report for the chart: complete, escaped, printable."""

from __future__ import annotations

import os
import re
import shutil
from html.parser import HTMLParser

import pytest

from tpmap import model
from tpmap.report import REPORT_FIELDS, ReportError, render_html, session_report, write_report

from diagram_points import ATLAS, mark_fields

XSS = '<img src=x onerror="window.__x=1">'
EVERY_DETAIL = {
    "technique": "electrical",
    "insertions": 6,
    "ltr_grade": "strong",
    "ltr_count": 4,
    "depth_mm": 27.5,
    "needle_length_mm": 40,
    "needle_gauge_mm": 0.3,
    "retention_min": 12,
    "estim_frequency_hz": 2,
    "estim_intensity_ma": 3.5,
    "estim_duration_min": 10,
    "tp_status": "active",
    "referral_reproduced": True,
    "note": "Referred to the lateral knee " + XSS,
}


class _Text(HTMLParser):
    """The text of a page as a reader sees it, and the tags it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def parsed(page: str) -> _Text:
    reader = _Text()
    reader.feed(page)
    return reader


@pytest.fixture
def session(store):
    patient = store.create_patient({"code": "P-0042", "sex": "female", "birth_year": 1988}, "t")
    episode = store.create_episode(
        patient.id,
        {"condition": "knee_osteoarthritis", "affected_side": "left", "start_date": "2026-02-01"},
        "t",
    )
    session = store.create_session(
        episode.id,
        {"date": "2026-02-03", "clinician": XSS, "nprs_before": 7, "nprs_after": 4, "note": XSS},
        "t",
    )
    first = store.add_mark(session.id, mark_fields("anterior", "vmo", "left"), "t")
    store.update_mark(first.id, EVERY_DETAIL, "t")
    store.add_mark(session.id, mark_fields("posterior", "gluteus_medius", "left"), "t")
    structure = mark_fields("anterior", "medial_joint_line", "left", "structures")
    store.add_mark(session.id, {**structure, "technique": "periosteal_electrical"}, "t")
    store.add_pressure_pain_threshold(session.id, {"site": XSS, "side": "left", "kg_cm2": 3.2}, "t")
    store.add_adverse_event(session.id, {"type": "other", "severity": "mild", "note": XSS}, "t")
    return session


def test_the_report_lists_every_recorded_field_of_a_mark(store, session):
    page = render_html(session_report(store, session.id, user="ab"), ATLAS)
    text = " ".join(parsed(page).text)
    # Every field a clinician records about a point is in REPORT_FIELDS ...
    assert set(REPORT_FIELDS) == set(model.MARK_DETAIL_FIELDS)
    # ... and each recorded value is in the report, as the form shows it.
    row = page.split("<tbody>")[1].split("</tr>")[0]
    for name, value in EVERY_DETAIL.items():
        shown = model.MARK_FIELDS[name].format(value)
        if name == "note":
            continue
        assert f">{shown}" in row or f" {shown}" in row or f"({shown})" in row, name
    assert "Note: Referred to the lateral knee" in text
    assert "Vastus medialis obliquus (left)" in text
    assert "Medial tibiofemoral joint line" in text or "joint line" in text.lower()
    assert "Electrical" in row and "2, 3.5, 10" in row and "40 × 0.3" in row
    assert "Strong (4)" in row and ">Active<" in row and ">Yes<" in row


def test_the_report_holds_the_record_of_the_session(store, session):
    page = render_html(session_report(store, session.id, user="ab"), ATLAS)
    text = " ".join(parsed(page).text)
    for expected in (
        "P-0042",
        "Knee osteoarthritis",
        "Left",
        "03 Feb 2026",
        "NPRS before: 7",
        "NPRS after: 4",
        "3.20 kg/cm²",
        "Other",
        "mild",
        "Points needled",
    ):
        assert expected in text, expected
    # The diagram: one numbered circle per point, numbered in the order they were placed.
    numbers = re.findall(r'<g class="mark">.*?>(\d+)</text></g>', page)
    assert sorted(numbers, key=int) == ["1", "2", "3"]
    assert page.count("<svg") == 2  # the views that hold points: front and back


def test_typed_text_is_text_in_the_report(store, session):
    page = render_html(session_report(store, session.id), ATLAS)
    reader = parsed(page)
    assert "img" not in reader.tags and "script" not in reader.tags
    assert sum(XSS in t for t in reader.text) >= 4  # clinician, site, event, notes


def test_a_session_without_points_says_so(store):
    patient = store.create_patient({"code": "P-0043"}, "t")
    episode = store.create_episode(
        patient.id,
        {"condition": "other", "affected_side": "right", "start_date": "2026-02-01"},
        "t",
    )
    empty = store.create_session(episode.id, {"date": "2026-02-02", "clinician": "AB"}, "t")
    text = " ".join(parsed(render_html(session_report(store, empty.id), ATLAS)).text)
    assert "No points were recorded" in text and "None recorded" in text


def test_html_and_pdf_files(store, session, tmp_path):
    html_file = write_report(store, session.id, tmp_path / "report.html", atlas=ATLAS)
    assert html_file.read_text().startswith("<!DOCTYPE html>")
    with pytest.raises(ReportError, match=r"\.html or \.pdf"):
        write_report(store, session.id, tmp_path / "report.docx", atlas=ATLAS)
    if shutil.which("chromium") is None:
        if os.environ.get("TPMAP_REQUIRE_BROWSER") == "1":
            pytest.fail("Chromium is required (CI) but not installed")
        pytest.skip("PDF needs Debian's chromium")
    pdf = write_report(store, session.id, tmp_path / "report.pdf", atlas=ATLAS)
    assert pdf.read_bytes()[:5] == b"%PDF-"


def test_the_page_sends_the_open_sessions_report(store, session, clinician):
    import base64

    from bokeh.document import Document

    from tpmap.apps.annotate import make_document

    page = make_document(Document(), store=store, atlas=ATLAS, user=clinician)
    page.report.make()  # no session open: says so, sends nothing
    assert page.status.is_error and page.download.data["b64"] == []
    episode = store.get_episode(session.episode_id)
    page.pickers.patient_select.value = str(episode.patient_id)
    page.report.make()
    (name,) = page.download.data["filename"]
    assert name == "tpmap-session-2026-02-03-P-0042.html"
    html = base64.b64decode(page.download.data["b64"][0]).decode()
    assert "Dry needling session report" in html and "Vastus medialis obliquus" in html
    assert "by tester" in html  # the signed-in clinician asked for it
    assert "Report saved as" in page.status.text
