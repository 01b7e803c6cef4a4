"""Outcome scores: recorded, corrected, removed and undone, by the store and the page."""

from __future__ import annotations

import datetime as dt

import pytest
from bokeh.document import Document

from tpmap.apps.annotate import make_document
from tpmap.model import ValidationError
from tpmap.store import NotFoundError, UndoResult

from diagram_points import ATLAS


@pytest.fixture
def episode(store):
    patient = store.create_patient({"code": "P-OUT"}, "t")
    return store.create_episode(
        patient.id,
        {"condition": "knee_osteoarthritis", "affected_side": "left", "start_date": "2026-01-01"},
        "t",
    )


def scores(store, episode_id):
    return [(o.instrument, o.score, o.date.isoformat()) for o in store.list_outcomes(episode_id)]


# -- the store -------------------------------------------------------------------------------------


def test_a_correction_is_validated_as_a_whole_and_undone(store, episode):
    o = store.add_outcome(
        episode.id, {"instrument": "womac_function", "score": 40, "date": "2026-01-05"}, "t"
    )
    with pytest.raises(ValidationError, match="WOMAC physical function is between 0 and 68"):
        store.update_outcome(o.id, {"score": "70"}, "t")
    with pytest.raises(ValidationError, match="Unknown field"):
        store.update_outcome(o.id, {"scroe": "7"}, "t")
    store.update_outcome(o.id, {"score": "35,5", "date": "2026-01-06"}, "t")
    assert scores(store, episode.id) == [("womac_function", 35.5, "2026-01-06")]
    # Changing the instrument re-checks the score against the new one's range.
    with pytest.raises(ValidationError, match="NPRS is a whole number"):
        store.update_outcome(o.id, {"instrument": "nprs"}, "t")
    undone = store.undo_last_outcome(episode.id, "t")
    assert undone == UndoResult(
        "Undid correcting the WOMAC physical function score of 06 Jan 2026", o.id
    )
    assert scores(store, episode.id) == [("womac_function", 40.0, "2026-01-05")]


def test_undo_walks_back_through_additions_removals_and_corrections(store, episode):
    a = store.add_outcome(
        episode.id, {"instrument": "kujala", "score": 55, "date": "2026-01-05"}, "t"
    )
    b = store.add_outcome(
        episode.id, {"instrument": "kujala", "score": 70, "date": "2026-02-05"}, "t"
    )
    store.update_outcome(b.id, {"score": 72}, "t")
    store.delete_outcome(a.id, "t")
    assert scores(store, episode.id) == [("kujala", 72.0, "2026-02-05")]
    texts = []
    while (result := store.undo_last_outcome(episode.id, "t")) is not None:
        texts.append(result.text.split(" the ")[0])
    assert texts == ["Undid removing", "Undid correcting", "Undid adding", "Undid adding"]
    assert store.list_outcomes(episode.id) == []
    assert len(store.list_outcomes(episode.id, include_deleted=True)) == 2
    assert store.verify_audit().ok
    actions = [e.action for e in store.audit_entries() if e.entity == "outcome"]
    # Every change is in the audit trail; an undo is recorded as one (as for marks).
    assert actions == ["create", "create", "update", "delete", "undo", "undo", "undo", "undo"]


def test_a_removed_score_cannot_be_corrected(store, episode):
    o = store.add_outcome(
        episode.id, {"instrument": "lefs", "score": 40, "date": "2026-01-05"}, "t"
    )
    store.delete_outcome(o.id, "t")
    with pytest.raises(ValidationError, match="removed"):
        store.update_outcome(o.id, {"score": 41}, "t")


def test_another_clinics_scores_are_not_found(store, episode, clinician):
    north = store.add_clinic("North clinic", user="tests")
    theirs = store.create_patient({"code": "P-NORTH"}, "t", clinic_id=north.id)
    their_episode = store.create_episode(
        theirs.id,
        {"condition": "other", "affected_side": "right", "start_date": "2026-01-01"},
        "t",
    )
    o = store.add_outcome(
        their_episode.id, {"instrument": "vas", "score": 5, "date": "2026-01-02"}, "t"
    )
    scoped = store.scoped(clinician)
    for call in (
        lambda: scoped.update_outcome(o.id, {"score": 1}),
        lambda: scoped.delete_outcome(o.id),
        lambda: scoped.undo_last_outcome(their_episode.id),
        lambda: scoped.list_outcomes(their_episode.id),
    ):
        with pytest.raises(NotFoundError, match="not found"):
            call()
    assert store.list_outcomes(their_episode.id)[0].score == 5


# -- the Outcomes panel ----------------------------------------------------------------------------


@pytest.fixture
def panel(store, episode, clinician):
    page = make_document(Document(), store=store, atlas=ATLAS, user=clinician)
    page.pickers.patient_select.value = str(episode.patient_id)
    page.tabs.active = page.OUTCOMES_TAB
    page.episode = episode
    return page


def type_score(page, instrument: str, score: str, date: object = None) -> None:
    f = page.outcomes.fields
    f["instrument"].widget.value = instrument
    f["score"].widget.value = score
    if date is not None:
        f["date"].widget.value = date
    page.outcomes.add()


def test_add_a_score_with_its_date_and_a_bad_one_with_its_message(panel, store):
    assert str(panel.outcomes.fields["date"].value) == dt.date.today().isoformat()
    type_score(panel, "womac_function", "80")
    assert store.list_outcomes(panel.episode.id) == []
    assert (
        panel.outcomes.fields["score"].message.text == "WOMAC physical function is between 0 and 68"
    )
    assert panel.outcomes.fields["score"].value == "80"  # what was typed stays
    type_score(panel, "womac_function", "41")
    type_score(panel, "womac_function", "26", dt.date(2026, 3, 1))
    type_score(panel, "kujala", "60", dt.date(2026, 1, 10))
    type_score(panel, "koos_pain", "50", dt.date.today() + dt.timedelta(days=3))  # future
    assert panel.outcomes.fields["date"].message.text == "Outcome date cannot be in the future"
    assert len(store.list_outcomes(panel.episode.id)) == 3
    data = panel.outcomes.source.data
    assert list(data["instrument"]) == [
        "Kujala",
        "WOMAC physical function",
        "WOMAC physical function",
    ]
    assert list(data["change"]) == ["baseline", "baseline", "15 worse"]
    assert panel.outcomes.fields["score"].widget.title == "Score (0–100)"


def test_correct_remove_and_undo_from_the_panel(panel, store):
    type_score(panel, "lefs", "40", dt.date(2026, 1, 5))
    type_score(panel, "lefs", "45", dt.date(2026, 2, 5))
    out = panel.outcomes
    out.source.selected.indices = [1]
    assert not out.save_button.disabled and out.fields["score"].value == "45"
    out.fields["score"].widget.value = "52"
    out.save()
    assert [o.score for o in store.list_outcomes(panel.episode.id)] == [40, 52]
    assert list(out.source.data["change"]) == ["baseline", "12 better (≥ MCID)"]
    out.remove()
    assert [o.score for o in store.list_outcomes(panel.episode.id)] == [40]
    assert "Undo brings it back" in panel.status.text
    out.undo()
    assert [o.score for o in store.list_outcomes(panel.episode.id)] == [40, 52]
    assert out.selected == out.source.data["id"][1]  # the score brought back is chosen
    out.undo()
    assert [o.score for o in store.list_outcomes(panel.episode.id)] == [40, 45]


def test_a_forged_row_choice_changes_nothing(panel, store):
    type_score(panel, "vas", "6.5", dt.date(2026, 1, 5))
    panel.outcomes.source.selected.indices = [5]
    assert panel.outcomes.selected is None and panel.outcomes.save_button.disabled


# -- item answers ------------------------------------------------------------------------------


def answer(page, points: list[float | str]) -> None:
    for select, value in zip(page.outcomes.items.selects, points, strict=False):
        select.value = value if isinstance(value, str) else f"{value:g}"


def test_item_answers_give_the_total_that_add_score_saves(panel, store):
    out = panel.outcomes
    out.fields["instrument"].widget.value = "nprs"
    assert not out.items.toggle.visible  # a single number: no items to answer
    out.fields["instrument"].widget.value = "kujala"
    assert out.items.toggle.visible
    out.items._toggled()
    assert len(out.items.selects) == 13 and not out.table.visible
    answer(panel, [3, 5, 3, 8, 3, 6, 7, 8, 8, 8, 10, 3])  # the 13th not yet
    assert "every item must be answered; missing: 13" in out.items.total.text
    assert out.fields["score"].value in ("", None)  # no total, nothing put in the field
    answer(panel, [3, 5, 3, 8, 3, 6, 7, 8, 8, 8, 10, 3, 5])
    assert out.fields["score"].value == "77"
    assert "total from 13 of 13 answers: 77" in out.items.total.text
    out.fields["date"].widget.value = dt.date(2026, 1, 10)
    out.add()
    [saved] = store.list_outcomes(panel.episode.id)
    assert (saved.instrument, saved.score) == ("kujala", 77)
    assert not out.items.is_open and out.table.visible  # back to the list


def test_koos_items_follow_the_half_answered_rule_and_the_typed_score_wins(panel, store):
    out = panel.outcomes
    out.fields["instrument"].widget.value = "koos_qol"
    out.items._toggled()
    answer(panel, [2, "", "", ""])
    assert "at least 2 of its 4 items" in out.items.total.text
    answer(panel, [2, 2, "", ""])
    assert out.fields["score"].value == "50"
    out.fields["score"].widget.value = "55"  # the clinician overrides: what is shown is saved
    out.add()
    assert [o.score for o in store.list_outcomes(panel.episode.id)] == [55]


def test_a_forged_item_answer_gives_a_message_and_no_total(panel, store):
    out = panel.outcomes
    out.fields["instrument"].widget.value = "lefs"
    out.items._toggled()
    answer(panel, [4] * 20)
    assert out.fields["score"].value == "80"
    out.fields["score"].show(None)
    out.items.selects[0].value = "<img src=x onerror=alert(1)>"  # not one of the options
    assert "LEFS item 1" in out.items.total.text and "is not one of its answers" in (
        out.items.total.text
    )
    assert out.items.total.render_as_text  # shown as text, never as markup
    assert out.fields["score"].value in ("", None)
    # Another instrument closes the items: their answers were only a way to the total.
    out.fields["instrument"].widget.value = "kujala"
    assert not out.items.is_open and out.items.toggle.visible
    assert store.list_outcomes(panel.episode.id) == []
