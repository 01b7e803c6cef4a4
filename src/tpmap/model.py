"""The domain vocabulary of tpmap and the validation of everything a user can type.

Pure standard library: the web page, the CLI, CSV imports and the store all validate through
these functions, so a clinician sees the same message wherever a value is rejected.

Validators take a mapping of raw values (as they come from a form or a CSV cell: ``"3"``,
``""``, ``" yes "``) and return a new dict of cleaned, typed values, or raise
:class:`ValidationError` carrying one message per offending field.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "ADVERSE_EVENT_FIELDS",
    "ADVERSE_EVENT_TYPES",
    "ADVERSE_EVENT_TYPE_LABELS",
    "AFFECTED_SIDES",
    "CONDITIONS",
    "CONDITION_LABELS",
    "ELECTRICAL_TECHNIQUES",
    "EPISODE_FIELDS",
    "ESTIM_FIELDS",
    "FIELDS",
    "FIELD_LABELS",
    "KINDS",
    "KIND_LABELS",
    "LAYERS",
    "LAYER_LABELS",
    "LTR_GRADES",
    "MARK_DETAIL_FIELDS",
    "MARK_FIELDS",
    "MAX_NOTE_LENGTH",
    "OUTCOME_FIELDS",
    "OUTCOME_INSTRUMENTS",
    "PATIENT_FIELDS",
    "PPT_FIELDS",
    "SESSION_FIELDS",
    "SESSION_FIELD_SPECS",
    "SEVERITIES",
    "SEXES",
    "SIDES",
    "TECHNIQUES",
    "TECHNIQUE_LABELS",
    "TP_STATUSES",
    "VIEWS",
    "VIEW_LABELS",
    "AdverseEventInput",
    "AdverseEventType",
    "AffectedSide",
    "Condition",
    "Direction",
    "EpisodeInput",
    "FieldSpec",
    "Instrument",
    "Kind",
    "Layer",
    "LtrGrade",
    "MarkInput",
    "OutcomeInput",
    "PatientInput",
    "PressurePainThresholdInput",
    "SessionInput",
    "Severity",
    "Sex",
    "Side",
    "Technique",
    "TpStatus",
    "ValidationError",
    "View",
    "clean_text",
    "coerce_bool",
    "coerce_float",
    "coerce_int",
    "fields_for_technique",
    "is_electrical",
    "kg_cm2_to_kpa",
    "kpa_to_kg_cm2",
    "validate_adverse_event_fields",
    "validate_episode_fields",
    "validate_mark_fields",
    "validate_outcome_fields",
    "validate_patient_fields",
    "validate_ppt_fields",
    "validate_session_fields",
]


# --------------------------------------------------------------------------------------------
# Vocabulary. The string values are stable ids stored in the database: never rename them.
# --------------------------------------------------------------------------------------------


class Sex(StrEnum):
    """Sex recorded for a patient."""

    FEMALE = "female"
    MALE = "male"
    OTHER = "other"
    UNKNOWN = "unknown"


class Condition(StrEnum):
    """The knee condition an episode of care is for."""

    PATELLOFEMORAL_PAIN = "patellofemoral_pain"
    KNEE_OSTEOARTHRITIS = "knee_osteoarthritis"
    LATERAL_KNEE_PAIN = "lateral_knee_pain"
    TOTAL_KNEE_ARTHROPLASTY = "total_knee_arthroplasty"
    OTHER = "other"


class Side(StrEnum):
    """Anatomical side (the patient's)."""

    LEFT = "left"
    RIGHT = "right"


class AffectedSide(StrEnum):
    """Side of the painful knee for an episode."""

    LEFT = "left"
    RIGHT = "right"
    BOTH = "both"


class View(StrEnum):
    """Diagram view a mark was placed on."""

    ANTERIOR = "anterior"
    POSTERIOR = "posterior"
    LATERAL_LEFT = "lateral_left"
    LATERAL_RIGHT = "lateral_right"


class Layer(StrEnum):
    """Diagram layer: muscles on top or underneath, or the non-muscle structures."""

    SUPERFICIAL = "superficial"
    DEEP = "deep"
    STRUCTURES = "structures"  # ligaments, tendons, periosteal sites (atlas ``kind``)


class Kind(StrEnum):
    """What kind of tissue a diagram region is: the needled structure, not its layer."""

    MUSCLE = "muscle"
    LIGAMENT = "ligament"
    TENDON = "tendon"
    PERIOSTEUM = "periosteum"
    FASCIA = "fascia"


class Technique(StrEnum):
    """Needling technique (STRICTA item)."""

    STATIC = "static"
    PISTONING = "pistoning"
    ELECTRICAL = "electrical"
    PERIOSTEAL_ELECTRICAL = "periosteal_electrical"


class LtrGrade(StrEnum):
    """Strength of the local twitch response."""

    NONE = "none"
    WEAK = "weak"
    MEDIUM = "medium"
    STRONG = "strong"


class TpStatus(StrEnum):
    """Whether the trigger point was active (reproduced the complaint) or latent."""

    ACTIVE = "active"
    LATENT = "latent"


class AdverseEventType(StrEnum):
    """Adverse event after dry needling (after Brady 2014)."""

    BRUISING = "bruising"
    BLEEDING = "bleeding"
    PAIN_DURING = "pain_during"
    PAIN_AFTER = "pain_after"
    AGGRAVATED_SYMPTOMS = "aggravated_symptoms"
    DROWSINESS = "drowsiness"
    HEADACHE = "headache"
    NAUSEA = "nausea"
    OTHER = "other"


class Severity(StrEnum):
    """Adverse event severity."""

    MILD = "mild"
    SIGNIFICANT = "significant"
    SERIOUS = "serious"


class Direction(StrEnum):
    """Which way an outcome score improves."""

    LOWER_IS_BETTER = "lower_is_better"
    HIGHER_IS_BETTER = "higher_is_better"


def _ids(enum: type[StrEnum]) -> tuple[str, ...]:
    return tuple(member.value for member in enum)


SEXES: tuple[str, ...] = _ids(Sex)
CONDITIONS: tuple[str, ...] = _ids(Condition)
SIDES: tuple[str, ...] = _ids(Side)
AFFECTED_SIDES: tuple[str, ...] = _ids(AffectedSide)
VIEWS: tuple[str, ...] = _ids(View)
LAYERS: tuple[str, ...] = _ids(Layer)
KINDS: tuple[str, ...] = _ids(Kind)
TECHNIQUES: tuple[str, ...] = _ids(Technique)
LTR_GRADES: tuple[str, ...] = _ids(LtrGrade)
TP_STATUSES: tuple[str, ...] = _ids(TpStatus)
ADVERSE_EVENT_TYPES: tuple[str, ...] = _ids(AdverseEventType)
SEVERITIES: tuple[str, ...] = _ids(Severity)

CONDITION_LABELS: dict[str, str] = {
    "patellofemoral_pain": "Patellofemoral pain",
    "knee_osteoarthritis": "Knee osteoarthritis",
    "lateral_knee_pain": "Lateral knee pain / ITB syndrome",
    "total_knee_arthroplasty": "Before total knee arthroplasty",
    "other": "Other",
}
TECHNIQUE_LABELS: dict[str, str] = {
    "static": "Static",
    "pistoning": "Pistoning (fast-in/fast-out)",
    "electrical": "Electrical",
    "periosteal_electrical": "Periosteal electrical",
}
ADVERSE_EVENT_TYPE_LABELS: dict[str, str] = {
    "bruising": "Bruising",
    "bleeding": "Bleeding",
    "pain_during": "Pain during treatment",
    "pain_after": "Pain after treatment",
    "aggravated_symptoms": "Aggravated symptoms",
    "drowsiness": "Drowsiness",
    "headache": "Headache",
    "nausea": "Nausea",
    "other": "Other",
}
KIND_LABELS: dict[str, str] = {
    "muscle": "Muscle",
    "ligament": "Ligament",
    "tendon": "Tendon",
    "periosteum": "Periosteum (bone)",
    "fascia": "Fascia",
}
VIEW_LABELS: dict[str, str] = {
    "anterior": "Anterior",
    "posterior": "Posterior",
    "lateral_left": "Lateral (left)",
    "lateral_right": "Lateral (right)",
}
#: What clinicians call each layer (the clinician page's layer switch shows these).
LAYER_LABELS: dict[str, str] = {
    "superficial": "Superficial",
    "deep": "Deep",
    "structures": "Ligaments, tendons, bone",
}

ELECTRICAL_TECHNIQUES: frozenset[str] = frozenset({"electrical", "periosteal_electrical"})


def is_electrical(technique: str | None) -> bool:
    """Return True when ``technique`` delivers electrical stimulation."""
    return technique in ELECTRICAL_TECHNIQUES


# --------------------------------------------------------------------------------------------
# Outcome instruments and their minimal clinically important differences (ANATOMY.md section 3)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Instrument:
    """An outcome instrument: score range, direction of improvement and MCID."""

    id: str
    label: str
    direction: Direction
    mcid: float
    minimum: float
    maximum: float
    integer: bool = False
    unit: str = "points"

    def improvement(self, baseline: float, follow_up: float) -> float:
        """Change from ``baseline`` to ``follow_up``, positive when the patient got better."""
        change = follow_up - baseline
        return -change if self.direction is Direction.LOWER_IS_BETTER else change

    def is_responder(self, baseline: float, follow_up: float) -> bool:
        """True when the improvement reaches the minimal clinically important difference."""
        # A small tolerance so that 12.5 recorded as 12.499999 from a float sum still counts.
        return self.improvement(baseline, follow_up) >= self.mcid - 1e-9


_LOWER = Direction.LOWER_IS_BETTER
_HIGHER = Direction.HIGHER_IS_BETTER
OUTCOME_INSTRUMENTS: dict[str, Instrument] = {
    i.id: i
    for i in (
        Instrument("nprs", "NPRS", _LOWER, 2, 0, 10, integer=True),
        Instrument("vas", "VAS", _LOWER, 2, 0, 10, unit="cm"),
        Instrument("womac_function", "WOMAC physical function", _LOWER, 12.5, 0, 68),
        Instrument("kujala", "Kujala", _HIGHER, 10, 0, 100),
        Instrument("akps", "AKPS", _HIGHER, 10, 0, 100),
        Instrument("lefs", "LEFS", _HIGHER, 9, 0, 80),
        Instrument("koos_pain", "KOOS pain", _HIGHER, 15, 0, 100),
        Instrument("koos_symptoms", "KOOS symptoms", _HIGHER, 12.5, 0, 100),
        Instrument("koos_adl", "KOOS ADL", _HIGHER, 15.5, 0, 100),
        Instrument("koos_sport", "KOOS sport/recreation", _HIGHER, 17.5, 0, 100),
        Instrument("koos_qol", "KOOS quality of life", _HIGHER, 12.5, 0, 100),
    )
}

_KPA_PER_KG_CM2 = 98.0665  # standard gravity: 1 kgf/cm2 = 98.0665 kPa


def kpa_to_kg_cm2(kpa: float) -> float:
    """Convert a pressure pain threshold from kPa to kg/cm2 (1 kg/cm2 is about 98.1 kPa)."""
    return kpa / _KPA_PER_KG_CM2


def kg_cm2_to_kpa(kg_cm2: float) -> float:
    """Convert a pressure pain threshold from kg/cm2 to kPa."""
    return kg_cm2 * _KPA_PER_KG_CM2


# --------------------------------------------------------------------------------------------
# Coercion of raw form/CSV values
# --------------------------------------------------------------------------------------------


class ValidationError(ValueError):
    """Raised when input is rejected; ``errors`` maps each field to a message for the user."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        self.errors: dict[str, str] = dict(errors)
        super().__init__("; ".join(self.errors.values()))


def _fmt(number: float | None) -> str:
    return "" if number is None else f"{number:g}"


def _blank(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _parse_number(value: object) -> float:
    if isinstance(value, bool):
        # True is an int in Python, but a checkbox is not a count of insertions.
        raise ValueError(value)
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        # Continental decimal comma ("12,5") from spreadsheets; no thousands separators here.
        if text.count(",") == 1 and "." not in text:
            text = text.replace(",", ".")
        return float(text)
    raise ValueError(value)


def coerce_int(value: object, lo: int, hi: int, message: str) -> int | None:
    """Coerce ``value`` to an int in ``[lo, hi]``; blank gives None; else raise ValueError(message).

    Accepts ints, integral floats and strings such as ``" 3 "`` or ``"3.0"``.
    """
    if _blank(value):
        return None
    try:
        number = _parse_number(value)
    except (ValueError, OverflowError):
        raise ValueError(message) from None
    if not math.isfinite(number) or number != int(number) or not lo <= number <= hi:
        raise ValueError(message)
    return int(number)


def coerce_float(value: object, lo: float, hi: float, message: str) -> float | None:
    """Coerce ``value`` to a finite float in ``[lo, hi]``; blank gives None."""
    if _blank(value):
        return None
    try:
        number = _parse_number(value)
    except (ValueError, OverflowError):
        raise ValueError(message) from None
    if not math.isfinite(number) or not lo <= number <= hi:
        raise ValueError(message)
    return number


_TRUE = frozenset({"yes", "y", "true", "t", "1"})
_FALSE = frozenset({"no", "n", "false", "f", "0"})


def coerce_bool(value: object, message: str) -> bool | None:
    """Coerce yes/no/true/false/1/0 (any case) or a bool; blank gives None."""
    if _blank(value):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ValueError(message)


def _choice(value: object, choices: Iterable[str], labels: Mapping[str, str], name: str) -> str:
    """Accept a stable id or its label, case-insensitively (CSV files carry either)."""
    allowed = tuple(choices)
    if isinstance(value, str):
        text = value.strip()
        key = text.lower().replace("-", "_").replace(" ", "_")
        if key in allowed:
            return key
        for choice in allowed:
            if labels.get(choice, "").lower() == text.lower():
                return choice
    shown = ", ".join(labels.get(c, c.replace("_", " ")) for c in allowed)
    raise ValueError(f"{name} must be one of: {shown}")


def _today() -> dt.date:
    # The server may run in UTC while the clinic is ahead of it: accept either calendar day.
    return max(dt.date.today(), dt.datetime.now(dt.UTC).date())


def _date(value: object, name: str, *, not_future: bool = True) -> dt.date:
    if isinstance(value, dt.datetime):
        result = value.date()
    elif isinstance(value, dt.date):
        result = value
    elif isinstance(value, str):
        text = value.strip()
        parsed: dt.date | None
        try:
            parsed = dt.date.fromisoformat(text[:10]) if len(text) >= 10 else None
        except ValueError:
            parsed = None
        if parsed is None:
            raise ValueError(f"{name} must be a date such as 2024-03-15")
        result = parsed
    else:
        raise ValueError(f"{name} must be a date such as 2024-03-15")
    if not_future and result > _today():
        raise ValueError(f"{name} cannot be in the future")
    if result.year < 1900:
        raise ValueError(f"{name} must be after 1900")
    return result


# Hostile text: characters that are invisible, reorder what is shown (the "Trojan source"
# bidirectional overrides and isolates), or that a database refuses (NUL, lone surrogates).
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_LINE_BREAKS = frozenset("\n\r\t")


def _hostile(text: str, name: str, *, multiline: bool = False) -> None:
    """Raise ValueError naming ``name`` when ``text`` holds a control or bidi override character."""
    for char in text:
        if char.isprintable() or char == " ":
            continue
        if multiline and char in _LINE_BREAKS:
            continue
        if char in _BIDI_CONTROLS:
            raise ValueError(
                f"{name} contains a character that reverses the text's direction: retype it"
            )
        category = unicodedata.category(char)
        if category in ("Cc", "Cs"):
            raise ValueError(f"{name} contains a control or invalid character: retype it")
        # Other format characters (Cf: zero-width joiners, soft hyphens ...) and separators
        # are harmless in free text but never belong in a single-line name or code.
        if not multiline and category != "Zs":
            raise ValueError(f"{name} contains an invisible character: retype it")


def _shown(value: object, limit: int = 40) -> str:
    """``value`` for a message: invisible and control characters escaped, length capped."""
    text = str(value)[:limit]
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)


def _text(value: object, name: str, max_length: int, *, multiline: bool = False) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be text")
    text = value.strip()
    if len(text) > max_length:
        raise ValueError(f"{name} is at most {max_length} characters")
    _hostile(text, name, multiline=multiline)
    return text


def clean_text(
    value: object, label: str, max_length: int, *, multiline: bool = False, strip: bool = True
) -> str:
    """Text of at most ``max_length`` characters without control or bidi override characters.

    For names and labels outside the clinical records (accounts, clinics); raises
    :class:`ValidationError` with a message naming ``label``.

    >>> clean_text(" North clinic ", "Clinic name", 100)
    'North clinic'
    """
    try:
        if strip:
            return _text(value, label, max_length, multiline=multiline)
        if not isinstance(value, str):
            raise ValueError(f"{label} must be text")
        _hostile(value, label, multiline=multiline)
        return value
    except ValueError as exc:
        raise ValidationError({label.lower().replace(" ", "_"): str(exc)}) from None


ESTIM_FIELDS: tuple[str, ...] = ("estim_frequency_hz", "estim_intensity_ma", "estim_duration_min")

# --------------------------------------------------------------------------------------------
# Field specifications: the ONE definition of every field a user can type. Validation, the
# pages' widgets (title, unit, range hint, choices), reports and the CLI's choices read them.
# --------------------------------------------------------------------------------------------

MAX_NOTE_LENGTH = 2000

FieldKind = Literal["int", "float", "choice", "flag", "text", "date", "custom"]


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """What one field means: its label, unit, range or choices, and the message when it is wrong.

    Parameters
    ----------
    name
        The stable column name (``depth_mm``).
    label
        What a clinician reads next to the field (``Depth``).
    kind
        ``int``, ``float``, ``choice``, ``flag`` (yes/no), ``text``, ``date``, or ``custom``
        (a rule of its own in ``parse``).
    unit
        Shown after the label and in range messages (``mm``).
    minimum, maximum
        The accepted range of numbers (inclusive).
    step
        A widget hint: the natural increment.
    choices, choice_labels
        Stable ids and their labels, in the order a form offers them.
    max_length
        Longest accepted text.
    noun
        The field's name in messages when it differs from the label (``NPRS``).
    empty
        What a blank text becomes (``""`` for notes; ``None`` otherwise).
    multiline
        Text that may hold line breaks and tabs (notes).
    parse
        A rule replacing the kind's own (patient codes, muscle ids).

    Examples
    --------
    >>> spec = MARK_FIELDS["depth_mm"]
    >>> spec.title, spec.clean("12,5")
    ('Depth (mm)', 12.5)
    >>> spec.clean("999")
    Traceback (most recent call last):
    ...
    ValueError: Depth is between 0 and 150 mm
    """

    name: str
    label: str
    kind: FieldKind
    unit: str = ""
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    choices: tuple[str, ...] = ()
    choice_labels: tuple[tuple[str, str], ...] = ()
    max_length: int | None = None
    noun: str | None = None
    empty: str | None = None
    multiline: bool = False
    parse: Callable[[object], Any] | None = None

    @property
    def title(self) -> str:
        """The label with its unit, as a form shows it: ``Depth (mm)``."""
        return f"{self.label} ({self.unit})" if self.unit else self.label

    @property
    def numeric(self) -> bool:
        """True for whole numbers and decimals (and custom rules with a numeric range)."""
        return self.kind in ("int", "float") or (self.kind == "custom" and self.minimum is not None)

    @property
    def hint(self) -> str:
        """A short range hint for an empty field: ``0-150``."""
        if self.minimum is None or self.maximum is None:
            return ""
        return f"{_fmt(self.minimum)}–{_fmt(self.maximum)}"

    @property
    def message(self) -> str:
        """The clinician's message when a value is not accepted."""
        noun = self.noun or self.label
        unit = f" {self.unit}" if self.unit else ""
        if self.kind == "int":
            return (
                f"{noun} is a whole number from {_fmt(self.minimum)} to {_fmt(self.maximum)}{unit}"
            )
        if self.kind == "float":
            return f"{noun} is between {_fmt(self.minimum)} and {_fmt(self.maximum)}{unit}"
        if self.kind == "flag":
            return f"{noun} is yes or no"
        if self.kind == "choice":
            labels = dict(self.choice_labels)
            shown = ", ".join(labels.get(c, c.replace("_", " ")) for c in self.choices)
            return f"{noun} must be one of: {shown}"
        if self.kind == "date":
            return f"{noun} must be a date such as 2024-03-15"
        if self.kind == "text":
            return f"{noun} is at most {self.max_length} characters"
        return f"{noun} is not valid"

    def label_of(self, value: str | None) -> str:
        """The label of a choice id (the id itself, readable, when it has none)."""
        if value is None:
            return ""
        return dict(self.choice_labels).get(value) or value.replace("_", " ").capitalize()

    def options(self) -> list[tuple[str, str]]:
        """``(id, label)`` pairs of a choice field, in form order."""
        return [(c, self.label_of(c)) for c in self.choices]

    def format(self, value: object) -> str:
        """A stored value as a form or report shows it (``12.5``, ``Yes``, ``Static``)."""
        if value is None or value == "":
            return ""
        if self.kind == "flag":
            return "Yes" if value else "No"
        if self.kind == "choice":
            return self.label_of(str(value))
        if isinstance(value, dt.date):
            return value.isoformat()
        if isinstance(value, float):
            return _fmt(value)
        return str(value)

    def clean(self, value: object) -> Any:
        """The typed value of ``value`` (blank gives None); raise ValueError(message) if wrong."""
        if self.parse is not None:
            return self.parse(value)
        kind = self.kind
        if kind == "int":
            return coerce_int(value, int(self.minimum or 0), int(self.maximum or 0), self.message)
        if kind == "float":
            return coerce_float(
                value, float(self.minimum or 0), float(self.maximum or 0), self.message
            )
        if kind == "flag":
            return coerce_bool(value, self.message)
        if kind == "choice":
            if _blank(value):
                return None
            labels = dict(self.choice_labels)
            return _choice(value, self.choices, labels, self.noun or self.label)
        if kind == "date":
            return None if _blank(value) else _date(value, self.noun or self.label)
        if kind == "text":
            text = _text(
                value,
                self.noun or self.label,
                self.max_length or MAX_NOTE_LENGTH,
                multiline=self.multiline,
            )
            return text or self.empty
        raise TypeError(f"field {self.name} of kind {kind} needs a parse rule")


def _specs(*specs: FieldSpec) -> dict[str, FieldSpec]:
    return {s.name: s for s in specs}


def _int(name: str, label: str, lo: int, hi: int, unit: str = "", **kw: Any) -> FieldSpec:
    return FieldSpec(name, label, "int", unit, lo, hi, step=1, **kw)


def _float(
    name: str, label: str, lo: float, hi: float, unit: str = "", step: float = 1, **kw: Any
) -> FieldSpec:
    return FieldSpec(name, label, "float", unit, lo, hi, step=step, **kw)


def _choice_spec(
    name: str, label: str, ids: tuple[str, ...], labels: Mapping[str, str] | None = None, **kw: Any
) -> FieldSpec:
    pairs = tuple((i, (labels or {}).get(i) or i.replace("_", " ").capitalize()) for i in ids)
    return FieldSpec(name, label, "choice", choices=ids, choice_labels=pairs, **kw)


def _text_spec(name: str, label: str, max_length: int, **kw: Any) -> FieldSpec:
    return FieldSpec(name, label, "text", max_length=max_length, **kw)


def _note_spec() -> FieldSpec:
    return _text_spec("note", "Note", MAX_NOTE_LENGTH, empty="", multiline=True)


_MUSCLE_ID = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def _muscle(value: object) -> str | None:
    if _blank(value):
        return None
    if isinstance(value, str) and _MUSCLE_ID.match(value.strip()):
        return value.strip()
    raise ValueError("Muscle must be a muscle id from the diagram, such as vmo or gluteus_medius")


# Patient codes: pseudonymous ids, never names (ANATOMY.md section 3).
_CODE = re.compile(r"^[A-Za-z0-9_-]{2,32}$")
_CODE_NAME_MESSAGE = (
    "Patient code must not look like a name: use a pseudonymous code such as P-0042"
)


def _code(value: object) -> str | None:
    if _blank(value):
        return None
    if not isinstance(value, str):
        raise ValueError("Patient code must be text such as P-0042")
    text = value.strip()
    if len(text) > 32:
        raise ValueError("Patient code is at most 32 characters, such as P-0042")
    _hostile(text, "Patient code")
    if " " in text or "," in text:
        raise ValueError(_CODE_NAME_MESSAGE)
    if not _CODE.match(text):
        raise ValueError(
            "Patient code is 2 to 32 letters, digits, '-' or '_', such as P-0042 "
            "(a pseudonymous code, never a name)"
        )
    return text


def _birth_year(value: object) -> int | None:
    year = _today().year
    return coerce_int(value, 1900, year, "Birth year must be between 1900 and this year")


#: The clinical details of a mark, in the order a form shows them.
MARK_DETAIL_FIELDS: tuple[str, ...] = (
    "technique",
    "insertions",
    "ltr_grade",
    "ltr_count",
    "depth_mm",
    "needle_length_mm",
    "needle_gauge_mm",
    "retention_min",
    *ESTIM_FIELDS,
    "tp_status",
    "referral_reproduced",
    "note",
)
_MARK_POSITION_FIELDS = ("view", "x", "y", "muscle", "side", "layer", "atlas_version")

MARK_FIELDS: dict[str, FieldSpec] = _specs(
    _choice_spec("view", "View", VIEWS, VIEW_LABELS),
    # Diagram coordinates are centimetres on a reference body; beyond 10 m is garbage.
    _float("x", "Position x", -1000.0, 1000.0, "cm", step=0.1),
    _float("y", "Position y", -1000.0, 1000.0, "cm", step=0.1),
    FieldSpec("muscle", "Muscle", "custom", parse=_muscle),
    _choice_spec("side", "Side", SIDES),
    _choice_spec("layer", "Layer", LAYERS, LAYER_LABELS),
    _text_spec("atlas_version", "Atlas version", 64),
    FieldSpec("muscle_overridden", "Muscle overridden", "flag"),
    _choice_spec("technique", "Technique", TECHNIQUES, TECHNIQUE_LABELS),
    _int("insertions", "Insertions", 0, 100),
    _choice_spec("ltr_grade", "Twitch response", LTR_GRADES),
    _int("ltr_count", "Twitch count", 0, 100),
    _float("depth_mm", "Depth", 0, 150, "mm"),
    _float("needle_length_mm", "Needle length", 5, 150, "mm", step=5),
    _float("needle_gauge_mm", "Needle diameter", 0.12, 0.5, "mm", step=0.01),
    _float("retention_min", "Retention time", 0, 60, "min"),
    _float("estim_frequency_hz", "Stimulation frequency", 0, 250, "Hz"),
    _float("estim_intensity_ma", "Stimulation intensity", 0, 50, "mA", step=0.5),
    _float("estim_duration_min", "Stimulation duration", 0, 60, "min"),
    _choice_spec("tp_status", "Trigger point", TP_STATUSES, noun="Trigger point status"),
    FieldSpec("referral_reproduced", "Referral reproduced", "flag"),
    _note_spec(),
)
PATIENT_FIELDS: dict[str, FieldSpec] = _specs(
    FieldSpec("code", "Patient code", "custom", parse=_code),
    _choice_spec("sex", "Sex", SEXES),
    FieldSpec("birth_year", "Birth year", "custom", minimum=1900, step=1, parse=_birth_year),
)
EPISODE_FIELDS: dict[str, FieldSpec] = _specs(
    _choice_spec("condition", "Condition", CONDITIONS, CONDITION_LABELS),
    _choice_spec("affected_side", "Affected side", AFFECTED_SIDES),
    FieldSpec("start_date", "Start date", "date"),
    _int("symptom_duration_weeks", "Symptom duration", 0, 5200, "weeks"),
    _note_spec(),
)
SESSION_FIELD_SPECS: dict[str, FieldSpec] = _specs(
    FieldSpec("date", "Date", "date", noun="Session date"),
    _text_spec("clinician", "Clinician", 100),
    _int("nprs_before", "NPRS before", 0, 10, noun="NPRS"),
    _int("nprs_after", "NPRS after", 0, 10, noun="NPRS"),
    _note_spec(),
)
SESSION_FIELDS: tuple[str, ...] = tuple(SESSION_FIELD_SPECS)
PPT_FIELDS: dict[str, FieldSpec] = _specs(
    _text_spec("site", "Site", 64),
    _choice_spec("side", "Side", SIDES),
    _float("kg_cm2", "Pressure pain threshold", 0, 20, "kg/cm2", step=0.1),
)
ADVERSE_EVENT_FIELDS: dict[str, FieldSpec] = _specs(
    _choice_spec("type", "Adverse event", ADVERSE_EVENT_TYPES, ADVERSE_EVENT_TYPE_LABELS),
    _choice_spec("severity", "Severity", SEVERITIES),
    _note_spec(),
)


def _instrument(value: object) -> str | None:
    labels = {k: i.label for k, i in OUTCOME_INSTRUMENTS.items()}
    return None if _blank(value) else _choice(value, OUTCOME_INSTRUMENTS, labels, "Instrument")


OUTCOME_FIELDS: dict[str, FieldSpec] = _specs(
    FieldSpec(
        "instrument",
        "Instrument",
        "custom",
        choices=tuple(OUTCOME_INSTRUMENTS),
        choice_labels=tuple((k, i.label) for k, i in OUTCOME_INSTRUMENTS.items()),
        parse=_instrument,
    ),
    # The range depends on the instrument: checked in validate_outcome_fields.
    FieldSpec("score", "Score", "custom", parse=lambda v: None if _blank(v) else v),
    FieldSpec("date", "Date", "date", noun="Outcome date"),
)

#: Every record a user can type, by name: the specifications of its fields in form order.
FIELDS: dict[str, dict[str, FieldSpec]] = {
    "patient": PATIENT_FIELDS,
    "episode": EPISODE_FIELDS,
    "session": SESSION_FIELD_SPECS,
    "mark": MARK_FIELDS,
    "pressure_pain_threshold": PPT_FIELDS,
    "adverse_event": ADVERSE_EVENT_FIELDS,
    "outcome": OUTCOME_FIELDS,
}

#: Labels by column name, derived from :data:`FIELDS` (a name shared by records, such as
#: ``note`` or ``side``, has the same label in each).
FIELD_LABELS: dict[str, str] = {
    name: spec.label for specs in FIELDS.values() for name, spec in specs.items()
}


def fields_for_technique(technique: str | None) -> tuple[str, ...]:
    """Return the mark detail fields that apply to ``technique``, in form order.

    Stimulation settings only apply to the electrical techniques; every other field applies
    to all of them. ``None`` (technique not chosen yet) gives the non-electrical set.
    """
    if is_electrical(technique):
        return MARK_DETAIL_FIELDS
    return tuple(f for f in MARK_DETAIL_FIELDS if f not in ESTIM_FIELDS)


# --------------------------------------------------------------------------------------------
# The validators
# --------------------------------------------------------------------------------------------


def _apply(
    raw: Mapping[str, object],
    specs: Mapping[str, FieldSpec],
    required: Iterable[str],
    *,
    partial: bool,
    defaults: Mapping[str, object] | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Run each field's rule; collect all messages rather than stopping at the first."""
    errors: dict[str, str] = {}
    cleaned: dict[str, Any] = {}
    for key in raw:
        if key not in specs:
            errors[key] = f"Unknown field: {_shown(key)}"
    names = [k for k in specs if k in raw] if partial else list(specs)
    for name in names:
        value = raw.get(name)
        if _blank(value) and defaults and name in defaults and not partial:
            value = defaults[name]
        try:
            cleaned[name] = specs[name].clean(value)
        except ValueError as exc:
            errors[name] = str(exc)
    for name in required:
        if name in errors or (partial and name not in raw):
            continue
        if cleaned.get(name) is None:
            errors[name] = f"{specs[name].label} is required"
    return cleaned, errors


def _raise(errors: Mapping[str, str]) -> None:
    if errors:
        raise ValidationError(errors)


def validate_mark_fields(fields: Mapping[str, object], *, partial: bool = False) -> dict[str, Any]:
    """Validate and coerce the fields of a mark.

    Parameters
    ----------
    fields
        Raw values keyed by column name (strings from a form or CSV are coerced).
    partial
        Only check the keys present (a live form check); otherwise every position field is
        required and missing detail fields become None.

    Returns
    -------
    dict
        Cleaned values.

    Raises
    ------
    ValidationError
        With one clinician-readable message per rejected field.
    """
    cleaned, errors = _apply(
        fields,
        MARK_FIELDS,
        _MARK_POSITION_FIELDS,
        partial=partial,
        defaults={"muscle_overridden": False},
    )
    technique = cleaned.get("technique")
    if "technique" in cleaned and not is_electrical(technique):
        for name in ESTIM_FIELDS:
            if cleaned.get(name) is not None and name not in errors:
                errors[name] = "Stimulation settings apply only to electrical techniques"
    grade, count = cleaned.get("ltr_grade"), cleaned.get("ltr_count")
    if "ltr_count" not in errors and count is not None:
        if grade == LtrGrade.NONE and count != 0:
            errors["ltr_count"] = "Twitch count must be 0 when there was no twitch response"
        elif grade is not None and grade != LtrGrade.NONE and count == 0:
            errors["ltr_count"] = "Twitch count must be at least 1 when there was a twitch"
        elif grade is None and count > 0 and "ltr_grade" in cleaned:
            errors["ltr_grade"] = "Choose how strong the twitch response was"
    depth, length = cleaned.get("depth_mm"), cleaned.get("needle_length_mm")
    if depth is not None and length is not None and depth > length and "depth_mm" not in errors:
        errors["depth_mm"] = "Depth cannot exceed the needle length"
    _raise(errors)
    return cleaned


def validate_patient_fields(
    fields: Mapping[str, object], *, partial: bool = False
) -> dict[str, Any]:
    """Validate a patient: pseudonymous ``code``, ``sex`` (default unknown), ``birth_year``."""
    cleaned, errors = _apply(
        fields, PATIENT_FIELDS, ("code", "sex"), partial=partial, defaults={"sex": "unknown"}
    )
    _raise(errors)
    return cleaned


def validate_episode_fields(
    fields: Mapping[str, object], *, partial: bool = False
) -> dict[str, Any]:
    """Validate an episode of care: condition, affected side, start date, duration, note."""
    cleaned, errors = _apply(
        fields, EPISODE_FIELDS, ("condition", "affected_side", "start_date"), partial=partial
    )
    _raise(errors)
    return cleaned


def validate_session_fields(
    fields: Mapping[str, object], *, partial: bool = False
) -> dict[str, Any]:
    """Validate a treatment session: date (not in the future), clinician, NPRS before/after."""
    cleaned, errors = _apply(fields, SESSION_FIELD_SPECS, ("date", "clinician"), partial=partial)
    _raise(errors)
    return cleaned


def validate_ppt_fields(fields: Mapping[str, object], *, partial: bool = False) -> dict[str, Any]:
    """Validate a pressure pain threshold reading (kg/cm2, 0-20) at a site."""
    cleaned, errors = _apply(fields, PPT_FIELDS, ("site", "kg_cm2"), partial=partial)
    _raise(errors)
    return cleaned


def validate_adverse_event_fields(
    fields: Mapping[str, object], *, partial: bool = False
) -> dict[str, Any]:
    """Validate an adverse event: type, severity and note (required when the type is other)."""
    cleaned, errors = _apply(fields, ADVERSE_EVENT_FIELDS, ("type", "severity"), partial=partial)
    if cleaned.get("type") == AdverseEventType.OTHER and not cleaned.get("note"):
        errors.setdefault("note", "Describe the adverse event in the note")
    _raise(errors)
    return cleaned


def _score(spec: Instrument, raw: object) -> float | None:
    unit = "" if spec.unit == "points" else f" {spec.unit}"
    lo, hi = _fmt(spec.minimum), _fmt(spec.maximum)
    if spec.integer:
        message = f"{spec.label} is a whole number from {lo} to {hi}{unit}"
        value = coerce_int(raw, int(spec.minimum), int(spec.maximum), message)
        return None if value is None else float(value)
    return coerce_float(
        raw, spec.minimum, spec.maximum, f"{spec.label} is between {lo} and {hi}{unit}"
    )


def validate_outcome_fields(
    fields: Mapping[str, object], *, partial: bool = False
) -> dict[str, Any]:
    """Validate an outcome measure: instrument, score within that instrument's range, date."""
    cleaned, errors = _apply(
        fields, OUTCOME_FIELDS, ("instrument", "score", "date"), partial=partial
    )
    if cleaned.get("score") is not None:
        spec = OUTCOME_INSTRUMENTS.get(cleaned.get("instrument") or "")
        if spec is None:
            errors.setdefault("instrument", "Choose the instrument the score belongs to")
        else:
            try:
                cleaned["score"] = _score(spec, cleaned["score"])
            except ValueError as exc:
                errors["score"] = str(exc)
    _raise(errors)
    return cleaned


# --------------------------------------------------------------------------------------------
# Input records. Constructing one validates and coerces it, so an instance is always valid.
# --------------------------------------------------------------------------------------------


def _clean_into(obj: DataclassInstance, validator: Callable[..., dict[str, Any]]) -> None:
    raw = {f.name: getattr(obj, f.name) for f in fields(obj)}
    for name, value in validator(raw).items():
        # Frozen dataclass: object.__setattr__ is the sanctioned way to finish __post_init__.
        object.__setattr__(obj, name, value)


@dataclass(frozen=True, slots=True)
class PatientInput:
    """A new patient. ``code`` is pseudonymous (e.g. P-0042), never a name."""

    code: str
    sex: str = "unknown"
    birth_year: int | None = None

    def __post_init__(self) -> None:
        _clean_into(self, validate_patient_fields)


@dataclass(frozen=True, slots=True)
class EpisodeInput:
    """A new episode of care for one patient and condition."""

    condition: str
    affected_side: str
    start_date: dt.date
    symptom_duration_weeks: int | None = None
    note: str = ""

    def __post_init__(self) -> None:
        _clean_into(self, validate_episode_fields)


@dataclass(frozen=True, slots=True)
class SessionInput:
    """A new treatment session."""

    date: dt.date
    clinician: str
    nprs_before: int | None = None
    nprs_after: int | None = None
    note: str = ""

    def __post_init__(self) -> None:
        _clean_into(self, validate_session_fields)


@dataclass(frozen=True, slots=True)
class MarkInput:
    """One needled point: where on the diagram, which muscle, and how it was needled."""

    view: str
    x: float
    y: float
    muscle: str
    side: str
    layer: str
    atlas_version: str
    muscle_overridden: bool = False
    technique: str | None = None
    insertions: int | None = None
    ltr_grade: str | None = None
    ltr_count: int | None = None
    depth_mm: float | None = None
    needle_length_mm: float | None = None
    needle_gauge_mm: float | None = None
    retention_min: float | None = None
    estim_frequency_hz: float | None = None
    estim_intensity_ma: float | None = None
    estim_duration_min: float | None = None
    tp_status: str | None = None
    referral_reproduced: bool | None = None
    note: str = ""

    def __post_init__(self) -> None:
        _clean_into(self, validate_mark_fields)

    @classmethod
    def from_fields(cls, fields: Mapping[str, object]) -> MarkInput:
        """Build from raw form/CSV values, reporting every bad field at once."""
        return cls(**validate_mark_fields(fields))


@dataclass(frozen=True, slots=True)
class PressurePainThresholdInput:
    """A pressure pain threshold reading in kg/cm2 (use kpa_to_kg_cm2 for kPa algometers)."""

    site: str
    kg_cm2: float
    side: str | None = None

    def __post_init__(self) -> None:
        _clean_into(self, validate_ppt_fields)


@dataclass(frozen=True, slots=True)
class AdverseEventInput:
    """An adverse event during or after a session."""

    type: str
    severity: str
    note: str = ""

    def __post_init__(self) -> None:
        _clean_into(self, validate_adverse_event_fields)


@dataclass(frozen=True, slots=True)
class OutcomeInput:
    """An outcome instrument score on a date."""

    instrument: str
    score: float
    date: dt.date

    def __post_init__(self) -> None:
        _clean_into(self, validate_outcome_fields)
