"""The tpmap command."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from tpmap.cli import build_parser, main


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tpmap", *args], capture_output=True, text=True, timeout=300
    )


def test_help_explains_each_subcommand():
    out = run("--help").stdout
    for cmd in ("serve", "demo", "atlas", "report", "user", "audit"):
        assert cmd in out
    sub = run("atlas", "--help").stdout
    assert "--out" in sub and "--build" in sub


def test_default_command_is_serve():
    parser = build_parser()
    args = parser.parse_args(["serve", "--port", "0"])
    assert args.command == "serve"


def test_atlas_html_export(tmp_path):
    out = tmp_path / "atlas.html"
    assert main(["atlas", "--out", str(out)]) == 0
    html = out.read_text()
    assert "Gastroc. med." in html and "Bokeh" in html


def test_atlas_png_export(tmp_path):
    if not shutil.which("chromedriver"):
        if os.environ.get("TPMAP_REQUIRE_BROWSER") == "1":
            pytest.fail("PNG export needs chromium-driver, which CI installs")
        pytest.skip("needs chromium-driver")
    out = tmp_path / "atlas.png"
    assert main(["atlas", "--out", str(out), "--height", "300"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_atlas_needs_an_output(capsys):
    assert main(["atlas"]) == 2
    assert "--out" in capsys.readouterr().err


def test_demo_then_heatmap_in_batch(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    assert main(["demo", "--db", url, "--patients", "40", "--seed", "4"]) == 0
    assert "40 patients" in capsys.readouterr().out
    # A second demo into the same database is refused without --force.
    assert main(["demo", "--db", url, "--patients", "5"]) == 1
    assert "--force" in capsys.readouterr().err
    out = tmp_path / "fig.html"
    assert main(["heatmap", "--db", url, "--view", "posterior", "--out", str(out)]) == 0
    assert "patients, k = 5" in capsys.readouterr().out
    html = out.read_text()
    assert "Posterior: all conditions (n = " in html
    assert "patients with a mark within 1.5 cm" in html
    muscles = tmp_path / "muscles.html"
    assert main(["heatmap", "--db", url, "--mode", "muscles", "--out", str(muscles)]) == 0
    # About 40 patients: displayed counts carry up to 2 patients of consistent noise.
    n = int(re.search(r"% of (\d+) patients with a mark", muscles.read_text()).group(1))
    assert abs(n - 40) <= 2
    if shutil.which("chromedriver"):
        png = tmp_path / "fig.png"
        assert main(["heatmap", "--db", url, "--view", "anterior", "--out", str(png)]) == 0
        assert png.read_bytes()[:4] == b"\x89PNG"


def test_heatmap_keeps_the_floor_and_refuses_differencing(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    assert main(["demo", "--db", url, "--patients", "40", "--seed", "4"]) == 0
    capsys.readouterr()
    out = tmp_path / "fig.html"
    assert main(["heatmap", "--db", url, "--min-patients", "0", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "k cannot be below 5: using 5" in captured.err and "k = 5" in captured.out
    # One sex is a filter that leaves out every patient of the other: fine here; a filter
    # that leaves out fewer than 5 patients is refused with the reason.
    from tpmap import research

    data = research.load_dataset(url, snapshot=False)
    counts = data.cohort.groupby("condition", observed=True)["patient_id"].nunique()
    small = [c for c, n in counts.items() if 0 < n < 5]
    if small:
        others = [c for c in counts.index if c not in small and counts[c] > 0]
        args = [a for c in others for a in ("--condition", c)]
        assert main(["heatmap", "--db", url, *args, "--out", str(out)]) == 1
        assert "fewer than 5 patients" in capsys.readouterr().err


def test_heatmap_explains_a_wrong_or_empty_database(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'typo.db'}"
    assert main(["heatmap", "--db", url, "--out", str(tmp_path / "x.html")]) == 1
    assert "is not a tpmap database" in capsys.readouterr().err
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    assert main(["demo", "--db", url, "--patients", "0"]) == 0
    assert main(["heatmap", "--db", url, "--out", str(tmp_path / "x.html")]) == 1
    assert "No patients match" in capsys.readouterr().err


def test_atlas_svg_export(tmp_path):
    if not shutil.which("chromedriver"):
        if os.environ.get("TPMAP_REQUIRE_BROWSER") == "1":
            pytest.fail("SVG export needs chromium-driver, which CI installs")
        pytest.skip("needs chromium-driver")
    out = tmp_path / "atlas.svg"
    assert main(["atlas", "--out", str(out), "--height", "300"]) == 0
    text = out.read_text()
    assert text.lstrip().startswith("<svg") or "<svg" in text[:500]


def test_report_writes_a_sessions_report(tmp_path, capsys):
    from tpmap.store import Store

    url = f"sqlite:///{tmp_path / 'clinic.db'}"
    with Store(url) as store:
        patient = store.create_patient({"code": "P-0077"}, "t")
        episode = store.create_episode(
            patient.id,
            {
                "condition": "lateral_knee_pain",
                "affected_side": "right",
                "start_date": "2026-01-02",
            },
            "t",
        )
        session = store.create_session(episode.id, {"date": "2026-01-03", "clinician": "AB"}, "t")
    out = tmp_path / "report.html"
    assert main(["report", "--db", url, "--session", str(session.id), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    page = out.read_text()
    assert "P-0077" in page and "Lateral knee pain / ITB syndrome" in page
    assert main(["report", "--db", url, "--session", "999", "--out", str(out)]) == 1
    assert "no session with id 999" in capsys.readouterr().err
    assert main(["report", "--db", url, "--session", "1", "--out", str(tmp_path / "r.doc")]) == 1
    assert ".html or .pdf" in capsys.readouterr().err
    if shutil.which("chromium"):
        pdf = tmp_path / "report.pdf"
        args = ["report", "--db", url, "--session", str(session.id), "--out", str(pdf)]
        assert main(args) == 0
        assert pdf.read_bytes()[:5] == b"%PDF-"


def test_heatmap_without_db_reads_the_default_database_as_demo_writes_it(
    tmp_path, capsys, monkeypatch
):
    # conftest points the user's data folder into a temporary one: the default database.
    monkeypatch.delenv("TPMAP_DATABASE_URL", raising=False)
    out = tmp_path / "fig.html"
    assert main(["heatmap", "--out", str(out)]) == 1  # nothing there yet: a message
    assert "tpmap heatmap:" in capsys.readouterr().err
    assert main(["demo", "--patients", "30", "--seed", "2"]) == 0
    capsys.readouterr()
    assert main(["heatmap", "--out", str(out)]) == 0
    assert "patients, k = 5" in capsys.readouterr().out
