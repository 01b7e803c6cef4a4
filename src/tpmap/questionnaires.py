"""Item answers of the outcome questionnaires, and the totals their public scoring rules give.

A clinician may type an instrument's total directly, or enter the patient's answer to each
item and let tpmap compute the total by the instrument's published rule:

- **Kujala / AKPS** (Kujala et al. 1993, Arthroscopy 9:159-163): 13 items, each answer
  worth its own points; the total is their sum, 0-100 (higher is better).
- **LEFS** (Binkley et al. 1999, Phys Ther 79:371-383): 20 activities, each answered from
  0 (extreme difficulty or unable) to 4 (no difficulty); the total is the sum, 0-80.
- **WOMAC physical function** (Bellamy et al. 1988, J Rheumatol 15:1833-1840; Likert
  3.1): 17 items, each 0 (none) to 4 (extreme); the total is the sum, 0-68 (lower is
  better). The items' wording is licensed, so they are listed by number as on the form.
- **KOOS subscales** (Roos & Lohmander 2003, Health Qual Life Outcomes 1:64; KOOS scoring
  2012): each item 0 (no problems) to 4 (extreme problems); a subscale is
  ``100 - 25 * mean(answered items)``, 0-100 (higher is better), and is valid only when at
  least half of its items are answered (Pain 5 of 9, Symptoms 4 of 7, ADL 9 of 17,
  Sport/Rec 3 of 5, QOL 2 of 4).

The Kujala, LEFS and WOMAC totals need every item: a missing answer is named, never
guessed. Nothing here imports Bokeh; the clinician page builds its item fields from
:data:`QUESTIONNAIRES`.

Examples
--------
>>> q = QUESTIONNAIRES["kujala"]
>>> q.total({item.id: max(p for _, p in item.answers) for item in q.items})
100.0
>>> QUESTIONNAIRES["koos_pain"].total({"P1": 1, "P2": 2, "P3": 1, "P4": 0, "P5": 1})
75.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from tpmap import model

__all__ = ["QUESTIONNAIRES", "Item", "Questionnaire"]


@dataclass(frozen=True, slots=True)
class Item:
    """One item of a questionnaire: its label and the points of each answer."""

    id: str
    label: str
    #: (answer as on the form, its points), in the form's order
    answers: tuple[tuple[str, float], ...]


@dataclass(frozen=True, slots=True)
class Questionnaire:
    """A questionnaire whose answers give an instrument's total by a public rule."""

    instrument: str
    items: tuple[Item, ...]
    #: "sum": every item needed, the total is the sum of points; "koos": 100 - 25 * mean of
    #: the answered items, with at least half of them answered
    rule: str
    source: str

    @property
    def label(self) -> str:
        """The instrument's name, as everywhere in tpmap."""
        return model.OUTCOME_INSTRUMENTS[self.instrument].label

    @property
    def minimum_answers(self) -> int:
        """How many items must be answered for a valid total."""
        n = len(self.items)
        return math.ceil(n / 2) if self.rule == "koos" else n

    def total(self, answers: Mapping[str, object]) -> float:
        """The instrument's total from the points of each answered item.

        Parameters
        ----------
        answers
            Item id to the points of its answer; ``None`` or a missing key is unanswered.

        Returns
        -------
        float
            The total, within the instrument's range.

        Raises
        ------
        model.ValidationError
            An item that does not exist, an answer the item does not have, or too few
            answers; the message names them in the words of the form.
        """
        known = {item.id: item for item in self.items}
        unknown = sorted(str(k) for k in answers if k not in known)
        if unknown:
            raise model.ValidationError(
                {"answers": f"{self.label} has no item {', '.join(unknown)}"}
            )
        points: list[float] = []
        missing: list[str] = []
        for item in self.items:
            value = answers.get(item.id)
            if value is None or value == "":
                missing.append(item.id)
                continue
            allowed = {p for _, p in item.answers}
            number = _number(value)
            if number is None or number not in allowed:
                raise model.ValidationError(
                    {"answers": f"{self.label} item {item.id}: {value!s:.20} is not one of "
                     f"its answers ({', '.join(f'{p:g}' for p in sorted(allowed))})"}
                )  # fmt: skip
            points.append(number)
        if len(points) < self.minimum_answers:
            if self.rule == "koos":
                need = (
                    f"at least {self.minimum_answers} of its {len(self.items)} items must be "
                    f"answered ({len(points)} are)"
                )
            else:
                need = f"every item must be answered; missing: {', '.join(missing)}"
            raise model.ValidationError({"answers": f"No {self.label} total yet: {need}"})
        if self.rule == "koos":
            return round(100.0 - 25.0 * sum(points) / len(points), 1)
        return float(sum(points))


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _scale(
    ids: list[str], labels: list[str], answers: tuple[tuple[str, float], ...]
) -> tuple[Item, ...]:
    return tuple(Item(i, label, answers) for i, label in zip(ids, labels, strict=True))


_KUJALA = (
    Item("1", "Limp", (("None", 5), ("Slight or periodical", 3), ("Constant", 0))),
    Item("2", "Support", (("Full support without pain", 5), ("Painful", 3),
                          ("Weight bearing impossible", 0))),
    Item("3", "Walking", (("Unlimited", 5), ("More than 2 km", 3), ("1–2 km", 2),
                          ("Unable", 0))),
    Item("4", "Stairs", (("No difficulty", 10), ("Slight pain when descending", 8),
                         ("Pain both when descending and ascending", 5), ("Unable", 0))),
    Item("5", "Squatting", (("No difficulty", 5), ("Repeated squatting painful", 4),
                            ("Painful each time", 3),
                            ("Possible with partial weight bearing", 2), ("Unable", 0))),
    Item("6", "Running", (("No difficulty", 10), ("Pain after more than 2 km", 8),
                          ("Slight pain from start", 6), ("Severe pain", 3), ("Unable", 0))),
    Item("7", "Jumping", (("No difficulty", 10), ("Slight difficulty", 7),
                          ("Constant pain", 2), ("Unable", 0))),
    Item("8", "Prolonged sitting with the knees flexed",
         (("No difficulty", 10), ("Pain after exercise", 8), ("Constant pain", 6),
          ("Pain forces to extend knees temporarily", 4), ("Unable", 0))),
    Item("9", "Pain", (("None", 10), ("Slight and occasional", 8),
                       ("Interferes with sleep", 6), ("Occasionally severe", 3),
                       ("Constant and severe", 0))),
    Item("10", "Swelling", (("None", 10), ("After severe exertion", 8),
                            ("After daily activities", 6), ("Every evening", 4),
                            ("Constant", 0))),
    Item("11", "Abnormal painful kneecap (patellar) movements",
         (("None", 10), ("Occasionally in sports activities", 6),
          ("Occasionally in daily activities", 4), ("At least one documented dislocation", 2),
          ("More than two dislocations", 0))),
    Item("12", "Atrophy of thigh", (("None", 5), ("Slight", 3), ("Severe", 0))),
    Item("13", "Flexion deficiency", (("None", 5), ("Slight", 3), ("Severe", 0))),
)  # fmt: skip

_LEFS_ANSWERS = (
    ("Extreme difficulty or unable to perform activity", 0.0),
    ("Quite a bit of difficulty", 1.0),
    ("Moderate difficulty", 2.0),
    ("A little bit of difficulty", 3.0),
    ("No difficulty", 4.0),
)
_LEFS_ACTIVITIES = [
    "Any of your usual work, housework or school activities",
    "Your usual hobbies, recreational or sporting activities",
    "Getting into or out of the bath",
    "Walking between rooms",
    "Putting on your shoes or socks",
    "Squatting",
    "Lifting an object, like a bag of groceries, from the floor",
    "Performing light activities around your home",
    "Performing heavy activities around your home",
    "Getting into or out of a car",
    "Walking 2 blocks",
    "Walking a mile",
    "Going up or down 10 stairs (about 1 flight of stairs)",
    "Standing for 1 hour",
    "Sitting for 1 hour",
    "Running on even ground",
    "Running on uneven ground",
    "Making sharp turns while running fast",
    "Hopping",
    "Rolling over in bed",
]

#: Box 0 (no problems) to box 4 (extreme problems), as KOOS and WOMAC Likert forms score them.
_BOXES = (
    ("None (0)", 0.0),
    ("Mild (1)", 1.0),
    ("Moderate (2)", 2.0),
    ("Severe (3)", 3.0),
    ("Extreme (4)", 4.0),
)


def _koos(prefix: str, n: int, instrument: str) -> Questionnaire:
    ids = [f"{prefix}{i}" for i in range(1, n + 1)]
    return Questionnaire(
        instrument,
        _scale(ids, [f"Item {i}" for i in ids], _BOXES),
        "koos",
        "Roos & Lohmander 2003; KOOS scoring 2012",
    )


_WOMAC_IDS = [str(i) for i in range(1, 18)]

QUESTIONNAIRES: dict[str, Questionnaire] = {
    q.instrument: q
    for q in (
        Questionnaire("kujala", _KUJALA, "sum", "Kujala et al. 1993"),
        Questionnaire("akps", _KUJALA, "sum", "Kujala et al. 1993 (AKPS)"),
        Questionnaire(
            "lefs",
            _scale([str(i) for i in range(1, 21)], _LEFS_ACTIVITIES, _LEFS_ANSWERS),
            "sum",
            "Binkley et al. 1999",
        ),
        Questionnaire(
            "womac_function",
            _scale(_WOMAC_IDS, [f"Function item {i}" for i in _WOMAC_IDS], _BOXES),
            "sum",
            "Bellamy et al. 1988 (WOMAC 3.1, Likert)",
        ),
        _koos("P", 9, "koos_pain"),
        _koos("S", 7, "koos_symptoms"),
        _koos("A", 17, "koos_adl"),
        _koos("SP", 5, "koos_sport"),
        _koos("Q", 4, "koos_qol"),
    )
}
