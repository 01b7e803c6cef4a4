"""Totals from item answers, by each questionnaire's published scoring rule.

Each total is checked against a hand computation from the rule, written out here
independently of the tables in ``tpmap.questionnaires``.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tpmap import model
from tpmap.questionnaires import QUESTIONNAIRES


def test_every_questionnaire_scores_an_instrument_within_its_range() -> None:
    for instrument, q in QUESTIONNAIRES.items():
        spec = model.OUTCOME_INSTRUMENTS[instrument]
        lowest = {i.id: min(p for _, p in i.answers) for i in q.items}
        highest = {i.id: max(p for _, p in i.answers) for i in q.items}
        totals = sorted([q.total(lowest), q.total(highest)])
        assert totals == [spec.minimum, spec.maximum], instrument


def test_item_counts_are_those_of_the_published_forms() -> None:
    counts = {k: len(q.items) for k, q in QUESTIONNAIRES.items()}
    assert counts == {
        "kujala": 13,
        "akps": 13,
        "lefs": 20,
        "womac_function": 17,
        "koos_pain": 9,
        "koos_symptoms": 7,
        "koos_adl": 17,
        "koos_sport": 5,
        "koos_qol": 4,
    }


def test_kujala_adds_the_points_of_each_answer() -> None:
    q = QUESTIONNAIRES["kujala"]
    # Slight limp 3, full support 5, walks > 2 km 3, pain descending stairs 8, squatting
    # painful each time 3, slight pain running from the start 6, jumping slight difficulty
    # 7, sitting pain after exercise 8, pain slight and occasional 8, swelling after severe
    # exertion 8, no subluxations 10, slight atrophy 3, no flexion deficiency 5.
    points = [3, 5, 3, 8, 3, 6, 7, 8, 8, 8, 10, 3, 5]
    answers = dict(zip([str(i) for i in range(1, 14)], points, strict=True))
    assert q.total(answers) == 77


def test_koos_is_100_minus_25_times_the_mean_of_the_answered_items() -> None:
    q = QUESTIONNAIRES["koos_pain"]
    answers = {f"P{i}": a for i, a in enumerate([2, 1, 1, 0, 3, 2, 1, 2, 0], start=1)}
    assert q.total(answers) == pytest.approx(100 - 25 * 12 / 9, abs=0.05)
    # 5 of 9 answered is enough (KOOS 2012: at least half); 4 is not.
    five = {k: answers[k] for k in ("P1", "P2", "P3", "P4", "P5")}
    assert q.total(five) == pytest.approx(100 - 25 * 7 / 5)
    with pytest.raises(model.ValidationError, match="at least 5 of its 9 items"):
        q.total({k: answers[k] for k in ("P1", "P2", "P3", "P4")})


def test_a_sum_needs_every_item_and_names_the_missing_ones() -> None:
    q = QUESTIONNAIRES["lefs"]
    answers: dict[str, object] = {str(i): 4 for i in range(1, 21)}
    assert q.total(answers) == 80
    answers["7"] = None
    del answers["12"]
    with pytest.raises(model.ValidationError, match="missing: 7, 12"):
        q.total(answers)


@pytest.mark.parametrize("bad", ["5", "2.5", "-1", "nan", "<b>4</b>", True, [4]])
def test_an_answer_the_item_does_not_have_is_refused_by_name(bad: object) -> None:
    answers: dict[str, object] = {str(i): 4 for i in range(1, 21)}
    answers["3"] = bad
    with pytest.raises(model.ValidationError, match=r"LEFS item 3: .* is not one of its answers"):
        QUESTIONNAIRES["lefs"].total(answers)


def test_an_item_that_does_not_exist_is_refused() -> None:
    with pytest.raises(model.ValidationError, match="has no item 99"):
        QUESTIONNAIRES["koos_qol"].total({"Q1": 0, "Q2": 0, "99": 1})


@given(
    st.sampled_from(sorted(QUESTIONNAIRES)),
    st.dictionaries(st.text(max_size=4), st.one_of(st.none(), st.text(max_size=4), st.floats())),
)
def test_any_answers_give_a_total_in_range_or_a_message(instrument: str, answers: dict) -> None:
    q = QUESTIONNAIRES[instrument]
    spec = model.OUTCOME_INSTRUMENTS[instrument]
    try:
        total = q.total(answers)
    except model.ValidationError as exc:
        assert exc.errors["answers"]
    else:
        assert spec.minimum <= total <= spec.maximum
        # A computed total is always a score the store accepts for that instrument.
        cleaned = model.validate_outcome_fields(
            {"instrument": instrument, "score": total, "date": "2026-01-01"}
        )
        assert cleaned["score"] == total
