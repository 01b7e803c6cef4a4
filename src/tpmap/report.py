"""A session report for the patient's chart: print-friendly HTML, and PDF through Chromium.

The report holds what a clinical record of a dry-needling session needs (after STRICTA
2010): patient code, episode, date and clinician; the diagram with the session's points
numbered; every recorded detail of each point; pain before and after, pressure pain
thresholds and adverse events. The diagram is drawn as inline SVG straight from the
atlas polygons, so the HTML needs no script and prints as it shows.

Examples
--------
>>> from tpmap.store import Store
>>> store = Store("sqlite://", secret="an example secret of at least 32 characters")
>>> patient = store.create_patient({"code": "P-0042"}, "ab")
>>> episode = store.create_episode(patient.id, {"condition": "patellofemoral_pain",
...     "affected_side": "right", "start_date": "2026-01-05"}, "ab")
>>> session = store.create_session(episode.id, {"date": "2026-01-12", "clinician": "AB"}, "ab")
>>> html = render_html(session_report(store, session.id))
>>> "P-0042" in html and "Patellofemoral pain" in html
True
"""

from __future__ import annotations

import datetime as dt
import html
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from shapely.geometry.base import BaseGeometry

from tpmap import model
from tpmap.atlas import Atlas, load_atlas

__all__ = [
    "REPORT_FIELDS",
    "ReportError",
    "SessionReport",
    "render_html",
    "session_report",
    "write_pdf",
    "write_report",
]

#: The details of a needled point the report lists: every detail a clinician records, in
#: the form's (STRICTA) order; the stimulation settings apply to electrical techniques only.
REPORT_FIELDS: tuple[str, ...] = model.MARK_DETAIL_FIELDS


class ReportError(RuntimeError):
    """A report could not be written (for example: no Chromium for a PDF)."""


class _Records(Protocol):
    """The reads a report needs (a Store, or a clinic-scoped view of one)."""

    def get_session(self, session_id: int) -> Any: ...
    def get_episode(self, episode_id: int) -> Any: ...
    def get_patient(self, patient_id: int) -> Any: ...
    def session_marks(self, session_id: int) -> list[Any]: ...
    def list_pressure_pain_thresholds(self, session_id: int) -> list[Any]: ...
    def list_adverse_events(self, session_id: int) -> list[Any]: ...


@dataclass(frozen=True)
class SessionReport:
    """Everything a session report shows, read from the store in one go."""

    patient: Any
    episode: Any
    session: Any
    marks: list[Any]
    ppts: list[Any]
    adverse_events: list[Any]
    generated_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    generated_by: str = ""


def session_report(store: _Records, session_id: int, *, user: str = "") -> SessionReport:
    """Read a session and everything recorded in it for a report.

    Parameters
    ----------
    store
        A :class:`tpmap.store.Store`, or the clinic-scoped view the pages use (then a
        session of another clinic is "not found").
    session_id
        The session to report.
    user
        Who asked for the report (printed in its footer).
    """
    session = store.get_session(session_id)
    episode = store.get_episode(session.episode_id)
    return SessionReport(
        patient=store.get_patient(episode.patient_id),
        episode=episode,
        session=session,
        marks=store.session_marks(session_id),
        ppts=store.list_pressure_pain_thresholds(session_id),
        adverse_events=store.list_adverse_events(session_id),
        generated_by=user,
    )


# ------------------------------------------------------------------------------ the diagram

_PANEL_HEIGHT = 330.0  # px for 110 cm of body: about 3 px a centimetre
_SKIN, _OUTLINE = "#f7ece2", "#8a6f5a"
_MUSCLE, _MUSCLE_LINE = "#ead2cb", "#b58d84"
_STRUCTURE, _STRUCTURE_LINE = "#e6ebf2", "#5b6f8a"
_MARK = "#173f7a"


def _path(geom: BaseGeometry, sx: float, x0: float, y1: float) -> str:
    parts = getattr(geom, "geoms", [geom])
    d = []
    for poly in parts:
        for ring in (poly.exterior, *poly.interiors):
            pts = [f"{(x - x0) * sx:.1f},{(y1 - y) * sx:.1f}" for x, y in ring.coords]
            d.append("M" + " L".join(pts) + " Z")
    return " ".join(d)


def _diagram(atlas: Atlas, marks: Sequence[Any], numbers: dict[int, int]) -> str:
    """Inline SVG of each view that holds marks, with the marks numbered."""
    views = [v for v in model.VIEWS if any(m.view == v for m in marks)] or ["anterior"]
    panels = []
    for view in views:
        xmin, ymin, xmax, ymax = atlas.bounds(view)
        pad = 1.0
        x0, x1, y0, y1 = xmin - pad, xmax + pad, ymin - pad, ymax + pad
        sx = _PANEL_HEIGHT / (y1 - y0)
        width, height = (x1 - x0) * sx, (y1 - y0) * sx
        layers = {m.layer for m in marks if m.view == view} or {"superficial"}
        shapes = [
            f'<path d="{_path(atlas.outline(view), sx, x0, y1)}" fill="{_SKIN}" '
            f'stroke="{_OUTLINE}" stroke-width="1"/>'
        ]
        for layer in (lay for lay in model.LAYERS if lay in layers or lay == "superficial"):
            structure = layer == model.Layer.STRUCTURES
            fill, line = (_STRUCTURE, _STRUCTURE_LINE) if structure else (_MUSCLE, _MUSCLE_LINE)
            for r in atlas.regions_in(view, layer):
                shapes.append(
                    f'<path d="{_path(r.polygon, sx, x0, y1)}" fill="{fill}" stroke="{line}" '
                    f'stroke-width="0.6"><title>{html.escape(r.label)}</title></path>'
                )
        for m in marks:
            if m.view != view:
                continue
            cx, cy = (m.x - x0) * sx, (y1 - m.y) * sx
            n = numbers[m.id]
            shapes.append(
                f'<g class="mark"><circle cx="{cx:.1f}" cy="{cy:.1f}" r="7" fill="{_MARK}" '
                f'stroke="white" stroke-width="1.2"/><text x="{cx:.1f}" y="{cy + 3.5:.1f}" '
                f'text-anchor="middle" font-size="9" font-weight="700" fill="white">{n}</text>'
                "</g>"
            )
        title = html.escape(model.VIEW_LABELS[view])
        panels.append(
            f'<figure class="view"><svg xmlns="http://www.w3.org/2000/svg" '
            f'width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.1f} {height:.1f}" '
            f'role="img" aria-label="{title} view with the needled points numbered">'
            f"{''.join(shapes)}</svg><figcaption>{title}</figcaption></figure>"
        )
    return f'<div class="diagram">{"".join(panels)}</div>'


# ------------------------------------------------------------------------------ the document

_CSS = """
@page { size: A4; margin: 14mm 12mm; }
body { font: 10.5pt/1.35 "DejaVu Sans", Arial, sans-serif; color: #111; margin: 0 auto;
       max-width: 190mm; }
h1 { font-size: 15pt; margin: 0 0 2mm; }
h2 { font-size: 11.5pt; margin: 5mm 0 1.5mm; border-bottom: 1px solid #999; }
.meta { display: grid; grid-template-columns: max-content 1fr max-content 1fr;
        gap: 0.8mm 4mm; margin-bottom: 2mm; }
.meta dt { font-weight: 700; } .meta dd { margin: 0; }
.diagram { display: flex; gap: 6mm; justify-content: center; page-break-inside: avoid; }
.view { margin: 0; text-align: center; } .view figcaption { font-size: 9pt; color: #444; }
table { border-collapse: collapse; width: 100%; font-size: 9pt; page-break-inside: auto; }
.points { font-size: 8pt; } .points th { font-weight: 600; }
.points tr.note td { border-top: none; font-style: italic; }
th, td { border: 1px solid #bbb; padding: 1mm 1.5mm; text-align: left; vertical-align: top; }
th { background: #eee; } tr { page-break-inside: avoid; }
.points th:first-child, .points td:first-child { text-align: right; width: 6mm; }
.none { color: #555; font-style: italic; }
footer { margin-top: 6mm; font-size: 8.5pt; color: #555; }
"""


def _text(value: object) -> str:
    return html.escape("" if value is None else str(value))


def _value(m: Any, name: str) -> str:
    """One recorded value as the form shows it (empty when not recorded)."""
    return model.MARK_FIELDS[name].format(getattr(m, name))


#: The table's columns: a heading and the fields it shows, joined (one row per point).
_COLUMNS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("Technique", ("technique",), ""),
    ("Insertions", ("insertions",), ""),
    ("Twitch (count)", ("ltr_grade", "ltr_count"), " ({})"),
    ("Depth (mm)", ("depth_mm",), ""),
    ("Needle (mm) length × Ø", ("needle_length_mm", "needle_gauge_mm"), " × {}"),
    ("Retention (min)", ("retention_min",), ""),
    ("Stimulation (Hz, mA, min)", model.ESTIM_FIELDS, ", {}"),
    ("Trigger point", ("tp_status",), ""),
    ("Referral", ("referral_reproduced",), ""),
)


def _cell(m: Any, names: tuple[str, ...], joiner: str) -> str:
    values = [_value(m, n) for n in names]
    if not any(values):
        return ""
    first, *rest = (v or "–" for v in values)
    return first + "".join(joiner.format(v) for v in rest)


def render_html(report: SessionReport, atlas: Atlas | None = None) -> str:
    """The report as one self-contained, print-friendly HTML page (no scripts).

    Every text a user typed (codes, names, sites, notes) is escaped.
    """
    atlas = atlas or load_atlas()
    p, e, s = report.patient, report.episode, report.session
    numbers = {m.id: i for i, m in enumerate(report.marks, start=1)}
    episode_fields = model.EPISODE_FIELDS
    sex = model.PATIENT_FIELDS["sex"].format(p.sex)
    rows = []
    for m in report.marks:
        where = model.VIEW_LABELS.get(m.view, m.view)
        if m.layer != model.Layer.SUPERFICIAL:
            where += f", {model.LAYER_LABELS.get(m.layer, m.layer).lower()}"
        cells = "".join(f"<td>{_text(_cell(m, names, j))}</td>" for _, names, j in _COLUMNS)
        rows.append(
            "<tr>"
            f"<td>{numbers[m.id]}</td>"
            f"<td>{_text(atlas.muscle_name(m.muscle))} ({_text(m.side)})"
            f"{' <i>set by hand</i>' if m.muscle_overridden else ''}</td>"
            f"<td>{_text(where)}</td>{cells}</tr>"
        )
        if m.note:
            rows.append(
                f'<tr class="note"><td></td><td colspan="{len(_COLUMNS) + 2}">'
                f"{_text(model.MARK_FIELDS['note'].label)}: {_text(m.note)}</td></tr>"
            )
    heads = "".join(f"<th>{_text(h)}</th>" for h, _, _ in _COLUMNS)
    points = (
        '<table class="points"><thead><tr><th>#</th><th>Structure</th><th>View</th>'
        f"{heads}</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
        if rows
        else '<p class="none">No points were recorded in this session.</p>'
    )
    nprs = model.SESSION_FIELD_SPECS
    pain = " &nbsp; ".join(
        f"{_text(nprs[name].label)}: {_text(nprs[name].format(getattr(s, name)) or '–')}"
        for name in ("nprs_before", "nprs_after")
    )
    pain = f"<p>{pain} (0–10)</p>"
    ppt_rows = "".join(
        f"<tr><td>{_text(r.site)}</td><td>{_text(r.side or '')}</td>"
        f"<td>{r.kg_cm2:.2f} kg/cm² ({model.kg_cm2_to_kpa(r.kg_cm2):.0f} kPa)</td></tr>"
        for r in report.ppts
    )
    ppts = (
        "<table><thead><tr><th>Site</th><th>Side</th><th>Threshold</th></tr></thead>"
        f"<tbody>{ppt_rows}</tbody></table>"
        if ppt_rows
        else '<p class="none">None recorded.</p>'
    )
    ae_type = model.ADVERSE_EVENT_FIELDS["type"]
    ae_rows = "".join(
        f"<tr><td>{_text(ae_type.format(a.type))}</td><td>{_text(a.severity)}</td>"
        f"<td>{_text(a.note)}</td></tr>"
        for a in report.adverse_events
    )
    aes = (
        "<table><thead><tr><th>Event</th><th>Severity</th><th>Note</th></tr></thead>"
        f"<tbody>{ae_rows}</tbody></table>"
        if ae_rows
        else '<p class="none">None reported.</p>'
    )
    meta = [
        ("Patient", p.code),
        ("Sex, birth year", f"{sex}{f', {p.birth_year}' if p.birth_year else ''}"),
        ("Condition", episode_fields["condition"].format(e.condition)),
        ("Affected side", episode_fields["affected_side"].format(e.affected_side)),
        ("Episode from", f"{e.start_date:%d %b %Y}"),
        ("Session", f"{s.date:%d %b %Y}"),
        ("Clinician", s.clinician),
        ("Points needled", str(len(report.marks))),
    ]
    meta_html = "".join(f"<dt>{_text(k)}</dt><dd>{_text(v)}</dd>" for k, v in meta)
    note = f"<h2>Session note</h2><p>{_text(s.note)}</p>" if s.note else ""
    stamp = f"{report.generated_at:%d %b %Y %H:%M} UTC"
    by = f" by {_text(report.generated_by)}" if report.generated_by else ""
    title = f"Dry needling session {s.date:%Y-%m-%d} – {p.code}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_text(title)}</title><style>{_CSS}</style></head><body>"
        "<h1>Dry needling session report</h1>"
        f'<dl class="meta">{meta_html}</dl>'
        "<h2>Needled points</h2>"
        f"{_diagram(atlas, report.marks, numbers)}{points}"
        f"<h2>Pain (NPRS)</h2>{pain}"
        f"<h2>Pressure pain thresholds</h2>{ppts}"
        f"<h2>Adverse events</h2>{aes}{note}"
        f"<footer>tpmap report, generated {stamp}{by}. Atlas "
        f"{_text(', '.join(sorted({m.atlas_version for m in report.marks})) or atlas.version)}."
        "</footer></body></html>\n"
    )


def _chromium() -> str | None:
    return (
        shutil.which("chromium")
        or shutil.which("chromium-browser")
        or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    )


def write_pdf(page: str, out: str | os.PathLike[str], *, timeout: float = 60.0) -> Path:
    """Print an HTML report to PDF with headless Chromium (A4, as the page's CSS asks).

    Raises
    ------
    ReportError
        When Chromium is not installed or cannot print.
    """
    browser = _chromium()
    if browser is None:
        raise ReportError(
            "A PDF needs Chromium (apt-get install chromium); write .html instead and print it"
        )
    target = Path(out).resolve()
    with tempfile.TemporaryDirectory(prefix="tpmap-report-") as tmp:
        source = Path(tmp) / "report.html"
        source.write_text(page, encoding="utf-8")
        command = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            f"--user-data-dir={Path(tmp) / 'profile'}",
            "--no-pdf-header-footer",
            f"--print-to-pdf={target}",
            source.as_uri(),
        ]
        try:
            done = subprocess.run(command, capture_output=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ReportError(f"Chromium could not print the report: {exc}") from None
    if done.returncode != 0 or not target.exists() or target.stat().st_size == 0:
        raise ReportError("Chromium could not print the report to PDF")
    return target


def write_report(
    store: _Records,
    session_id: int,
    out: str | os.PathLike[str],
    *,
    user: str = "",
    atlas: Atlas | None = None,
) -> Path:
    """Write a session's report to ``out``: ``.html`` always, ``.pdf`` through Chromium."""
    target = Path(out)
    suffix = target.suffix.lower()
    if suffix not in (".html", ".htm", ".pdf"):
        raise ReportError("The report is written as .html or .pdf")
    page = render_html(session_report(store, session_id, user=user), atlas)
    if suffix == ".pdf":
        return write_pdf(page, target)
    target.write_text(page, encoding="utf-8")
    return target
