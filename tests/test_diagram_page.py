"""The diagram page: document-level events and a real browser."""

from __future__ import annotations

from bokeh.document import Document
from bokeh.events import DoubleTap, Tap

from tpmap import load_atlas
from tpmap.apps.diagram import make_document

from bokeh_page import model_attr, tap, wait_for_bokeh
from conftest import sign_in


def build():
    doc = Document()
    make_document(doc, atlas=load_atlas())
    return doc


def test_tap_reports_the_muscle_under_it():
    doc = build()
    fig = doc.select_one({"name": "atlas-anterior"})
    status = doc.select_one({"name": "status"})
    doc.callbacks.trigger_event(Tap(fig, x=-5.0, y=57.0))
    assert "Vastus medialis obliquus (right)" in status.text
    doc.callbacks.trigger_event(DoubleTap(fig, x=5.0, y=57.0))
    assert "Vastus medialis obliquus (left)" in status.text
    doc.callbacks.trigger_event(Tap(fig, x=0.0, y=60.0))
    assert status.text == "Not on a muscle."


def test_view_switch_and_deep_layer():
    doc = build()
    views = doc.select_one({"name": "views"})
    layer = doc.select_one({"name": "layer"})
    post = doc.select_one({"name": "atlas-posterior"})
    assert not post.visible
    views.active = 1
    assert post.visible and not doc.select_one({"name": "atlas-anterior"}).visible
    status = doc.select_one({"name": "status"})
    gmin = load_atlas().region("posterior", "gluteus_minimus", "left", "deep").polygon
    p = gmin.representative_point()
    doc.callbacks.trigger_event(Tap(post, x=p.x, y=p.y))
    assert "Gluteus" in status.text and "minimus" not in status.text
    layer.active = 1
    doc.callbacks.trigger_event(Tap(post, x=p.x, y=p.y))
    assert "Gluteus minimus (left)" in status.text
    deep = next(r for r in post.renderers if r.name == "muscles-deep")
    assert deep.visible


def test_hover_names_the_muscle():
    doc = build()
    fig = doc.select_one({"name": "atlas-anterior"})
    hover = next(t for t in fig.tools if t.__class__.__name__ == "HoverTool")
    assert ("Muscle", "@name") in hover.tooltips


def test_in_a_browser_a_tap_names_the_muscle(serve, page):
    server = serve()
    sign_in(page, server, next_path="/atlas")
    wait_for_bokeh(page)
    tap(page, "atlas-anterior", -5.0, 57.0)
    page.wait_for_function(
        "() => [...Bokeh.index.all_views()].find(v => v.model.name === 'status')"
        ".model.text.includes('obliquus')"
    )
    assert "Vastus medialis obliquus (right)" in model_attr(page, "status", "text")
