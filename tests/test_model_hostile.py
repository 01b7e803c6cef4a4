"""Hostile and wrong input: every validator gives a clean record or a clear message.

Property-based (hypothesis): whatever a form, a CSV file or a forged document event sends,
validation never raises anything but ValidationError, never lets a control or bidirectional
override character into a code, name or note, and keeps every text within its limit.
"""

from __future__ import annotations

import math
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tpmap import model
from tpmap.auth import validate_clinic_name, validate_user_name
from tpmap.model import ValidationError

BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
CONTROLS = "\x00\x01\x07\x08\x0b\x0c\x1b\x7f\x85\x9b"

VALIDATORS = {
    "patient": (model.validate_patient_fields, ("code", "sex", "birth_year")),
    "episode": (
        model.validate_episode_fields,
        ("condition", "affected_side", "start_date", "symptom_duration_weeks", "note"),
    ),
    "session": (
        model.validate_session_fields,
        ("date", "clinician", "nprs_before", "nprs_after", "note"),
    ),
    "mark": (
        model.validate_mark_fields,
        tuple(f.name for f in __import__("dataclasses").fields(model.MarkInput)),
    ),
    "ppt": (model.validate_ppt_fields, ("site", "side", "kg_cm2")),
    "adverse_event": (model.validate_adverse_event_fields, ("type", "severity", "note")),
    "outcome": (model.validate_outcome_fields, ("instrument", "score", "date")),
}

# Anything a browser, a CSV cell or a forged Bokeh event could carry.
hostile_text = st.one_of(
    st.text(),
    st.text(alphabet=st.sampled_from(BIDI + CONTROLS + "P-0123 abc\n\t<>&\"'"), max_size=40),
    st.text(min_size=2000, max_size=2100),
    st.sampled_from(["<img src=x onerror=alert(1)>", "P-00\u202e24", "nan", "inf", "1e999"]),
)
anything = st.one_of(
    hostile_text,
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _clean_text(value: object, multiline: bool) -> bool:
    if not isinstance(value, str):
        return True
    for char in value:
        if char in BIDI:
            return False
        category = unicodedata.category(char)
        if category in ("Cc", "Cs") and not (multiline and char in "\n\r\t"):
            return False
    return True


@pytest.mark.parametrize("kind", sorted(VALIDATORS))
@settings(max_examples=150, deadline=None)
@given(data=st.data(), partial=st.booleans())
def test_any_input_gives_a_record_or_a_message(kind, data, partial):
    validate, names = VALIDATORS[kind]
    keys = st.one_of(st.sampled_from(names), st.text(max_size=8))
    raw = data.draw(st.dictionaries(keys, anything, max_size=len(names) + 2))
    try:
        cleaned = validate(raw, partial=partial)
    except ValidationError as exc:
        assert exc.errors and all(isinstance(m, str) and m for m in exc.errors.values())
        # A message is about the field, never an echo of hostile text or a Python error.
        for message in exc.errors.values():
            assert "Traceback" not in message and "object" not in message
            assert _clean_text(message, multiline=False)
        return
    for name, value in cleaned.items():
        assert _clean_text(value, multiline=name == "note"), (name, value)
        if isinstance(value, str):
            assert len(value) <= (model.MAX_NOTE_LENGTH if name == "note" else 100)
        if isinstance(value, float):
            assert math.isfinite(value)


SINGLE_LINE = {
    "patient code": (model.validate_patient_fields, "code", "P-0042"),
    "clinician": (model.validate_session_fields, "clinician", "Dr Berg"),
    "site": (model.validate_ppt_fields, "site", "vmo right"),
    "atlas version": (model.validate_mark_fields, "atlas_version", "2025.1"),
}


@pytest.mark.parametrize("field", sorted(SINGLE_LINE))
@given(char=st.sampled_from(BIDI + CONTROLS + "\n\t\u200b\u2028"), at=st.integers(0, 6))
def test_codes_and_names_refuse_invisible_and_reordering_characters(field, char, at):
    validate, name, good = SINGLE_LINE[field]
    assert validate({name: good}, partial=True)[name] == good
    bad = good[:at] + char + good[at:]
    if char.isspace() and (at == 0 or at >= len(good)):
        # Whitespace at either end (newline, NEL, ...) is trimmed like a space: harmless.
        assert validate({name: bad}, partial=True)[name] == good
        return
    with pytest.raises(ValidationError) as refused:
        validate({name: bad}, partial=True)
    assert name in refused.value.errors


@given(char=st.sampled_from(BIDI + CONTROLS.replace("\x00", "") + "\x00"))
def test_notes_refuse_control_and_bidi_characters_but_keep_lines(char):
    note = "Needled twice.\nPatient tolerated it well.\t(Note 2)"
    assert model.validate_episode_fields({"note": note}, partial=True)["note"] == note
    with pytest.raises(ValidationError, match="Note contains"):
        model.validate_episode_fields({"note": note[:8] + char + note[8:]}, partial=True)


def test_messages_say_what_is_wrong():
    with pytest.raises(ValidationError, match="reverses the text's direction"):
        model.validate_patient_fields({"code": "P-00\u202e42"})
    with pytest.raises(ValidationError, match="control or invalid character"):
        model.validate_session_fields({"clinician": "Dr\x1b[31m B"}, partial=True)
    with pytest.raises(ValidationError, match="at most 32 characters"):
        model.validate_patient_fields({"code": "P" * 33})
    with pytest.raises(ValidationError, match="at most 2000 characters"):
        model.validate_episode_fields({"note": "x" * 2001}, partial=True)
    with pytest.raises(ValidationError, match="control or invalid character"):
        model.validate_episode_fields({"note": "lone \ud800 surrogate"}, partial=True)


@given(name=hostile_text)
def test_account_and_clinic_names_are_plain_text_or_refused(name):
    for validate, limit in ((validate_user_name, 64), (validate_clinic_name, 100)):
        try:
            clean = validate(name)
        except ValidationError as exc:
            assert exc.errors
            continue
        assert clean == clean.strip() and 0 < len(clean) <= limit
        assert _clean_text(clean, multiline=False) and "\n" not in clean
    if isinstance(name, str) and "<" in name:
        with pytest.raises(ValidationError):
            validate_user_name(name)
