"""A realistic synthetic cohort for demonstrations, tests and benchmarks (``tpmap demo``).

:func:`generate_demo` writes patients, one episode of care each, 3-6 weekly sessions, the
needled trigger points (marks), pain scores, pressure pain thresholds, adverse events and
outcome measures into a :class:`~tpmap.store.Store` through its bulk inserts. The same seed
always gives the same cohort: every random draw comes from one
``numpy.random.default_rng(seed)`` and nothing depends on the clock.

Marks cluster at the classic trigger-point sites of :data:`SITES`: each site sits at a fixed
place relative to its muscle's region on the diagram, and each mark is drawn around it with a
Gaussian jitter and re-drawn until the atlas puts it inside the intended muscle, side and
layer, so the stored muscle is exactly what the app would derive from the tap. Which muscles a
patient gets follows the published prevalence per condition (shared ANATOMY.md):

- knee osteoarthritis: Sanchez-Romero 2020 (TFL 61 %, adductors 52 %, hamstrings 55 %,
  quadriceps 47 %, gastrocnemius 58 %, popliteus 29 %); some patients also get periosteal
  electrical dry needling at periosteal sites around the painful knee (Dunning 2018: joint
  lines, epicondyles, adductor tubercle, pes anserinus, patellar borders), marked on the
  structures layer (:data:`STRUCTURE_SITES`);
- patellofemoral pain: gluteus medius on the affected side and quadratus lumborum on the
  other (Zarei 2020), VMO, vastus lateralis and rectus femoris (Ma 2020); some patients also
  have the medial patellofemoral ligament (deep to VMO) needled;
- lateral knee pain: vastus lateralis, ITB, TFL, biceps femoris, fibularis longus;
- before total knee arthroplasty: most of the sites (Mayoral 2013: about 12.75 points).

Structure marks, like muscle marks, are drawn around a site and re-drawn until the atlas puts
them inside the intended structure (layer ``structures``).

Adverse events follow Brady 2014 (mild events after about 19 % of treatments: bruising 7.6 %,
bleeding 4.7 %); about 55 % of patients are responders (NPRS better by 2 or more points at the
12-week follow-up, and the condition's instrument by its MCID), the others are not. Outcome
instruments (NPRS and the condition's own: WOMAC, Kujala or LEFS) are scored at baseline and
2, 6 and 12 weeks after the first session (Dunning 2018's schedule); about 12 % of patients
are lost to follow-up after the first weeks (:data:`LOST_TO_FOLLOW_UP`). Structures and
follow-ups draw from a second stream seeded from the same seed, so adding them left the
muscle marks of a seed as they were.

Example
-------
>>> from tpmap.store import open_store  # doctest: +SKIP
>>> print(generate_demo(open_store("sqlite:///demo.db"), seed=1))  # doctest: +SKIP
200 patients, 879 sessions, 5 799 marks
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from shapely.geometry import Point
from shapely.ops import nearest_points

from tpmap import model
from tpmap.atlas import Atlas, load_atlas

__all__ = [
    "CONDITION_MIX",
    "DEFAULT_START",
    "DEMO_ACCOUNTS",
    "DEMO_CLINICS",
    "DEMO_PASSWORD",
    "FOLLOW_UP_DAYS",
    "LOST_TO_FOLLOW_UP",
    "PLANS",
    "SITES",
    "STRUCTURE_PLANS",
    "STRUCTURE_SITES",
    "DemoSummary",
    "MuscleGroup",
    "Site",
    "StructurePlan",
    "create_demo_accounts",
    "demo_accounts_text",
    "generate_demo",
    "site_centres",
]

#: Default first possible episode start: a fixed Monday, so that a seed means one cohort.
DEFAULT_START = dt.date(2025, 1, 6)
#: Episode start dates are spread over this many days (about 18 months) from ``start``.
ENROLMENT_DAYS = 548

_USER = "demo"
_CLINICIANS = ("demo-pt-a", "demo-pt-b", "demo-pt-c", "demo-pt-d", "demo-pt-e")

#: The demo cohort's clinics; demo patients are dealt to them in turn.
DEMO_CLINICS: tuple[str, ...] = ("North clinic", "South clinic", "West clinic")
#: The password of every demo account (a demo database only: never a real one).
DEMO_PASSWORD = "tpmap-demo-password"
#: (name, roles, clinics) of the demo accounts.
DEMO_ACCOUNTS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("anna", ("clinician",), ("North clinic",)),
    ("ben", ("clinician",), ("South clinic",)),
    ("carla", ("clinician", "researcher"), ("North clinic", "West clinic")),
    ("rosa", ("researcher",), ()),
    ("adam", ("admin",), ()),
)


# --------------------------------------------------------------------------------------------
# Trigger-point sites
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Site:
    """A classic trigger-point site of one muscle.

    ``views`` lists where the site is usually needled: ``(kind, weight, fu, fy)`` with kind
    ``anterior``, ``posterior`` or ``lateral`` (the lateral view of the mark's side), and the
    site centre as fractions of the bounding box of the muscle's region in that view: ``fy``
    from its lowest (0) to its highest point (1); ``fu`` on the anterior and posterior views
    from its medial (0) to its lateral edge (1), on a lateral view from its posterior (0) to
    its anterior edge (1). So the site follows the muscle when the diagram is redrawn.
    """

    name: str
    muscle: str
    views: tuple[tuple[str, float, float, float], ...]
    weight: float = 1.0
    sd_cm: float = 1.0
    layer: str = "superficial"
    near_knee: bool = False


def _s(name: str, muscle: str, *views: tuple[str, float, float, float], **kw: Any) -> Site:
    return Site(name, muscle, tuple(views), **kw)


_DEEP = {"layer": "deep"}

#: The sites marks cluster around (Rozenfeld 2019 sampling sites, Travell & Simons locations).
SITES: tuple[Site, ...] = (
    _s("rectus_femoris_proximal", "rectus_femoris", ("anterior", 0.85, 0.58, 0.80),
       ("lateral", 0.15, 0.55, 0.78)),
    _s("rectus_femoris_middle", "rectus_femoris", ("anterior", 0.85, 0.48, 0.43),
       ("lateral", 0.15, 0.50, 0.42), weight=0.4),
    _s("vmo", "vmo", ("anterior", 1.0, 0.42, 0.47), sd_cm=0.6, near_knee=True),
    _s("vastus_medialis_middle", "vastus_medialis", ("anterior", 1.0, 0.52, 0.61), sd_cm=0.7),
    _s("vastus_medialis_distal", "vastus_medialis", ("anterior", 1.0, 0.58, 0.23), sd_cm=0.7,
       near_knee=True),
    _s("vastus_lateralis_middle", "vastus_lateralis", ("anterior", 0.6, 0.62, 0.51),
       ("lateral", 0.4, 0.44, 0.57)),
    _s("vastus_lateralis_distal", "vastus_lateralis", ("anterior", 0.6, 0.49, 0.19),
       ("lateral", 0.4, 0.52, 0.20), near_knee=True),
    _s("tensor_fasciae_latae", "tensor_fasciae_latae", ("anterior", 0.6, 0.53, 0.60),
       ("lateral", 0.4, 0.49, 0.59)),
    _s("iliotibial_band_middle", "iliotibial_band", ("lateral", 1.0, 0.38, 0.59)),
    _s("iliotibial_band_distal", "iliotibial_band", ("lateral", 1.0, 0.69, 0.23),
       near_knee=True),
    _s("adductors_proximal", "adductors", ("anterior", 1.0, 0.47, 0.68)),
    _s("adductors_middle", "adductors", ("anterior", 0.75, 0.54, 0.33),
       ("posterior", 0.25, 0.64, 0.55), weight=0.6),
    _s("gluteus_medius_posterior", "gluteus_medius", ("posterior", 0.85, 0.22, 0.75),
       ("lateral", 0.15, 0.26, 0.68)),
    _s("gluteus_medius_middle", "gluteus_medius", ("posterior", 0.75, 0.50, 0.79),
       ("lateral", 0.25, 0.52, 0.77)),
    _s("gluteus_medius_anterior", "gluteus_medius", ("posterior", 0.55, 0.83, 0.69),
       ("lateral", 0.45, 0.79, 0.66)),
    _s("gluteus_minimus", "gluteus_minimus", ("posterior", 0.5, 0.60, 0.48),
       ("lateral", 0.5, 0.59, 0.49), sd_cm=0.8, **_DEEP),
    _s("gluteus_maximus_upper", "gluteus_maximus", ("posterior", 0.8, 0.44, 0.51),
       ("lateral", 0.2, 0.45, 0.55)),
    _s("gluteus_maximus_lower", "gluteus_maximus", ("posterior", 1.0, 0.56, 0.21),
       weight=0.6),
    _s("piriformis", "piriformis", ("posterior", 1.0, 0.56, 0.42), sd_cm=0.6, **_DEEP),
    _s("quadratus_lumborum_lateral", "quadratus_lumborum", ("posterior", 1.0, 0.77, 0.36),
       sd_cm=0.8),
    _s("quadratus_lumborum_medial", "quadratus_lumborum", ("posterior", 1.0, 0.17, 0.47),
       sd_cm=0.7, weight=0.7),
    _s("biceps_femoris_middle", "biceps_femoris", ("posterior", 0.8, 0.47, 0.50),
       ("lateral", 0.2, 0.40, 0.53)),
    _s("biceps_femoris_distal", "biceps_femoris", ("posterior", 0.7, 0.49, 0.21),
       ("lateral", 0.3, 0.59, 0.25), near_knee=True),
    _s("medial_hamstrings_middle", "semitendinosus_semimembranosus",
       ("posterior", 1.0, 0.49, 0.57)),
    _s("medial_hamstrings_distal", "semitendinosus_semimembranosus",
       ("posterior", 1.0, 0.41, 0.27), near_knee=True),
    _s("gastrocnemius_medial", "gastrocnemius_medial", ("posterior", 1.0, 0.50, 0.70),
       near_knee=True),
    _s("gastrocnemius_lateral", "gastrocnemius_lateral", ("posterior", 0.75, 0.47, 0.62),
       ("lateral", 0.25, 0.45, 0.65), near_knee=True),
    _s("soleus", "soleus", ("posterior", 0.8, 0.48, 0.48), ("lateral", 0.2, 0.56, 0.56)),
    _s("popliteus", "popliteus", ("posterior", 1.0, 0.45, 0.53), sd_cm=0.7, near_knee=True,
       **_DEEP),
    _s("tibialis_anterior_proximal", "tibialis_anterior", ("anterior", 0.7, 0.63, 0.77),
       ("lateral", 0.3, 0.56, 0.78)),
    _s("fibularis_longus_proximal", "fibularis_longus", ("lateral", 0.7, 0.44, 0.85),
       ("anterior", 0.3, 0.64, 0.79)),
)  # fmt: skip

_SITES_BY_MUSCLE: dict[str, list[int]] = {}
for _i, _site in enumerate(SITES):
    _SITES_BY_MUSCLE.setdefault(_site.muscle, []).append(_i)

_STRUCT = {"layer": "structures", "sd_cm": 0.25}

#: Needled structures that are not muscles (ANATOMY.md 1c), on the anterior view's structures
#: layer: the MPFL (patellofemoral pain) and the periosteal sites of periosteal electrical dry
#: needling for knee osteoarthritis (Dunning 2018). ``fu``/``fy`` as in :class:`Site`; the
#: patellar borders are four sites on one region (superior and inferior poles, medial and
#: lateral borders), just inside its edge.
STRUCTURE_SITES: tuple[Site, ...] = (
    _s("mpfl", "mpfl", ("anterior", 1.0, 0.50, 0.50), **_STRUCT),
    _s("medial_joint_line", "medial_joint_line", ("anterior", 1.0, 0.45, 0.50), **_STRUCT),
    _s("lateral_joint_line", "lateral_joint_line", ("anterior", 1.0, 0.55, 0.50), **_STRUCT),
    _s("medial_epicondyle", "medial_epicondyle", ("anterior", 1.0, 0.50, 0.50), **_STRUCT),
    _s("lateral_epicondyle", "lateral_epicondyle", ("anterior", 1.0, 0.50, 0.50), **_STRUCT),
    _s("adductor_tubercle", "adductor_tubercle", ("anterior", 1.0, 0.50, 0.50), **_STRUCT),
    _s("pes_anserinus", "pes_anserinus", ("anterior", 1.0, 0.50, 0.50), **_STRUCT),
    _s("patella_superior_pole", "patellar_borders", ("anterior", 1.0, 0.50, 0.90), **_STRUCT),
    _s("patella_medial_border", "patellar_borders", ("anterior", 1.0, 0.10, 0.50), **_STRUCT),
    _s("patella_lateral_border", "patellar_borders", ("anterior", 1.0, 0.90, 0.50), **_STRUCT),
    _s("patella_inferior_pole", "patellar_borders", ("anterior", 1.0, 0.50, 0.10), **_STRUCT),
)


@dataclass(frozen=True, slots=True)
class StructurePlan:
    """Structures needled in ``prevalence`` of a condition's patients.

    A patient with the plan gets ``count`` (inclusive range) of ``sites`` (names in
    :data:`STRUCTURE_SITES`) on the affected knee, needled in most of their sessions with
    ``technique`` (``periosteal_electrical``, or ``ligament``: pistoning, static or
    electrical, as clinicians needle the MPFL).
    """

    prevalence: float
    sites: tuple[str, ...]
    count: tuple[int, int]
    technique: str


_PERIOSTEAL_SITES = tuple(s.name for s in STRUCTURE_SITES if s.name != "mpfl")

#: Which conditions get structure marks, and how (the other conditions get none).
STRUCTURE_PLANS: dict[str, StructurePlan] = {
    "patellofemoral_pain": StructurePlan(0.25, ("mpfl",), (1, 1), "ligament"),
    "knee_osteoarthritis": StructurePlan(0.45, _PERIOSTEAL_SITES, (4, 8), "periosteal_electrical"),
}

#: Follow-up outcome scores: (days after the first session, how many days earlier at most):
#: 2, 6 and 12 weeks, after Dunning 2018; the 12-week visit stays inside the responder
#: window (research.ResponderRule: 4 to 12 weeks).
FOLLOW_UP_DAYS: tuple[tuple[int, int], ...] = ((16, 4), (44, 5), (84, 7))
#: Share of patients lost to follow-up: no scores after the 2-week one (about 12 %).
LOST_TO_FOLLOW_UP = 0.12
# How far along from baseline to the final score each follow-up is, on average.
_FOLLOW_UP_PROGRESS = (0.45, 0.85, 1.0)


# --------------------------------------------------------------------------------------------
# Who gets which muscles: per condition, groups of muscles with a prevalence
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MuscleGroup:
    """A muscle or group treated in ``prevalence`` of a condition's patients.

    When a patient has the group, each member muscle is included with its own (conditional)
    probability, at least one of them. ``side`` is ``affected`` (mostly the painful side) or
    ``contralateral`` (mostly the other side, as QL in Zarei 2020).
    """

    name: str
    prevalence: float
    muscles: tuple[tuple[str, float], ...]
    side: str = "affected"


def _g(name: str, p: float, *muscles: tuple[str, float], side: str = "affected") -> MuscleGroup:
    return MuscleGroup(name, p, muscles or ((name, 1.0),), side)


_QUADS = (("vmo", 0.5), ("vastus_medialis", 0.4), ("vastus_lateralis", 0.5),
          ("rectus_femoris", 0.35))  # fmt: skip
_HAMS = (("biceps_femoris", 0.65), ("semitendinosus_semimembranosus", 0.6))
_GASTROCS = (("gastrocnemius_medial", 0.7), ("gastrocnemius_lateral", 0.55))

#: Treated-muscle prevalence per condition (the probability that a patient has it treated).
PLANS: dict[str, tuple[MuscleGroup, ...]] = {
    "patellofemoral_pain": (
        _g("gluteus_medius", 0.75),
        _g("quadratus_lumborum", 0.45, side="contralateral"),
        _g("vmo", 0.60),
        _g("vastus_lateralis", 0.50),
        _g("rectus_femoris", 0.45),
        _g("vastus_medialis", 0.25),
        _g("tensor_fasciae_latae", 0.20),
        _g("iliotibial_band", 0.10),
        _g("gluteus_minimus", 0.10),
        _g("piriformis", 0.08),
    ),
    "knee_osteoarthritis": (
        _g("tensor_fasciae_latae", 0.61),
        _g("adductors", 0.52),
        _g("hamstrings", 0.55, *_HAMS),
        _g("quadriceps", 0.47, *_QUADS),
        _g("gastrocnemius", 0.58, *_GASTROCS),
        _g("popliteus", 0.29),
        _g("gluteus_medius", 0.25),
    ),
    "lateral_knee_pain": (
        _g("vastus_lateralis", 0.70),
        _g("iliotibial_band", 0.65),
        _g("tensor_fasciae_latae", 0.55),
        _g("biceps_femoris", 0.50),
        _g("fibularis_longus", 0.45),
        _g("gluteus_medius", 0.35),
        _g("gastrocnemius_lateral", 0.20),
        _g("gluteus_minimus", 0.15),
    ),
    "total_knee_arthroplasty": (
        _g(
            "quadriceps",
            0.85,
            ("vmo", 0.6),
            ("vastus_medialis", 0.5),
            ("vastus_lateralis", 0.7),
            ("rectus_femoris", 0.6),
        ),
        _g("hamstrings", 0.75, ("biceps_femoris", 0.75), ("semitendinosus_semimembranosus", 0.7)),
        _g("gastrocnemius", 0.70, ("gastrocnemius_medial", 0.8), ("gastrocnemius_lateral", 0.7)),
        _g("popliteus", 0.50),
        _g("tensor_fasciae_latae", 0.55),
        _g("adductors", 0.60),
        _g("gluteus_medius", 0.55),
        _g("iliotibial_band", 0.30),
        _g("soleus", 0.30),
        _g("tibialis_anterior", 0.25),
        _g("fibularis_longus", 0.20),
        _g("gluteus_maximus", 0.20),
    ),
    "other": (
        _g("gluteus_medius", 0.40),
        _g("vastus_lateralis", 0.35),
        _g("rectus_femoris", 0.30),
        _g("hamstrings", 0.30, *_HAMS),
        _g("gastrocnemius", 0.30, *_GASTROCS),
        _g("tensor_fasciae_latae", 0.30),
        _g("quadratus_lumborum", 0.20),
        _g("adductors", 0.20),
        _g("tibialis_anterior", 0.20),
        _g("soleus", 0.20),
        _g("gluteus_maximus", 0.20),
        _g("piriformis", 0.15),
    ),
}

#: Share of each condition in the cohort.
CONDITION_MIX: dict[str, float] = {
    "patellofemoral_pain": 0.35,
    "knee_osteoarthritis": 0.30,
    "lateral_knee_pain": 0.15,
    "total_knee_arthroplasty": 0.15,
    "other": 0.05,
}


@dataclass(frozen=True, slots=True)
class _Demographics:
    female: float  # share of women
    age: tuple[int, int]  # inclusive range at the episode start
    both_sides: float  # share of episodes with both knees affected
    symptom_weeks: tuple[int, int]
    extra_marks: float  # Poisson mean of marks beyond one per treated muscle in a session
    nprs: float  # mean baseline pain
    instrument: str | None  # the condition's own outcome instrument (besides NPRS)
    ppt_sites: tuple[str, str]


_PEOPLE: dict[str, _Demographics] = {
    "patellofemoral_pain": _Demographics(
        0.75, (15, 40), 0.20, (8, 156), 0.45, 5.5, "kujala", ("gluteus_medius", "vmo")
    ),
    "knee_osteoarthritis": _Demographics(
        0.62, (50, 80), 0.25, (26, 520), 0.35, 6.0, "womac_function",
        ("vastus_medialis", "tibialis_anterior"),
    ),
    "lateral_knee_pain": _Demographics(
        0.45, (20, 45), 0.08, (4, 78), 0.45, 5.0, "lefs",
        ("vastus_lateralis", "tibialis_anterior"),
    ),
    "total_knee_arthroplasty": _Demographics(
        0.60, (60, 85), 0.03, (104, 780), 0.80, 6.5, "womac_function",
        ("vastus_medialis", "tibialis_anterior"),
    ),
    "other": _Demographics(
        0.50, (18, 75), 0.10, (4, 104), 0.40, 5.0, "lefs",
        ("vastus_lateralis", "tibialis_anterior"),
    ),
}  # fmt: skip

#: Needling depth range per muscle (mm).
_DEPTH_MM: dict[str, tuple[float, float]] = {
    "quadratus_lumborum": (40, 60),
    "gluteus_medius": (25, 50),
    "gluteus_minimus": (40, 65),
    "gluteus_maximus": (30, 60),
    "piriformis": (50, 75),
    "tensor_fasciae_latae": (15, 35),
    "iliotibial_band": (10, 25),
    "vmo": (10, 25),
    "vastus_medialis": (15, 35),
    "vastus_lateralis": (20, 45),
    "rectus_femoris": (20, 40),
    "adductors": (20, 45),
    "biceps_femoris": (25, 50),
    "semitendinosus_semimembranosus": (25, 50),
    "gastrocnemius_medial": (15, 35),
    "gastrocnemius_lateral": (15, 35),
    "soleus": (20, 40),
    "popliteus": (30, 50),
    "tibialis_anterior": (15, 30),
    "fibularis_longus": (10, 25),
}
_NEEDLE_LENGTHS_MM = np.array([15.0, 25.0, 30.0, 40.0, 50.0, 60.0, 75.0, 90.0, 100.0])

# Adverse events per treatment (Brady 2014, n = 7,629): mild events after about 19 %.
_ADVERSE_RATES: tuple[tuple[str, float], ...] = (
    ("bruising", 0.076),
    ("bleeding", 0.047),
    ("pain_during", 0.030),
    ("pain_after", 0.022),
    ("aggravated_symptoms", 0.008),
    ("drowsiness", 0.004),
    ("headache", 0.004),
    ("nausea", 0.002),
)
_SIGNIFICANT_PER_TREATMENT = 0.0004  # Brady: significant events 0.04 %; none serious
_RESPONDER_SHARE = 0.55


# --------------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------------


def _n(value: int) -> str:
    return f"{value:,}".replace(",", " ")


@dataclass(frozen=True, slots=True)
class DemoSummary:
    """What :func:`generate_demo` wrote; ``str()`` gives "200 patients, 901 sessions, ..."."""

    seed: int
    patients: int
    episodes: int
    sessions: int
    marks: int
    pressure_pain_thresholds: int
    adverse_events: int
    outcomes: int

    def __str__(self) -> str:
        return f"{_n(self.patients)} patients, {_n(self.sessions)} sessions, {_n(self.marks)} marks"


# --------------------------------------------------------------------------------------------
# Geometry: site centres on the diagram, and sampling inside the intended region
# --------------------------------------------------------------------------------------------


def _view_for(kind: str, side: str) -> str:
    return f"lateral_{side}" if kind == "lateral" else kind


def _outward_sign(atlas: Atlas, view: str, side: str) -> float:
    """+1 when ``fu`` grows with x in ``view`` for ``side`` (lateral, or anterior, is +x)."""
    if view.startswith("lateral"):
        asis = atlas.landmark("asis", view, side).geometry.centroid.x
        psis = atlas.landmark("psis", view, side).geometry.centroid.x
        return 1.0 if asis > psis else -1.0
    any_region = next(r for r in atlas.regions_in(view) if r.side == side)
    return 1.0 if any_region.polygon.centroid.x > 0 else -1.0


@dataclass(frozen=True, slots=True)
class _Targets:
    """Every (site, view, side) combination: the region to hit and where to aim."""

    key: dict[tuple[int, str, str], int]  # (site index, view, side) -> row
    region: np.ndarray
    view: list[str]
    layer: list[str]
    cx: np.ndarray
    cy: np.ndarray
    sd: np.ndarray


def site_centres(atlas: Atlas | None = None) -> dict[tuple[str, str, str], tuple[float, float]]:
    """The centre of every site on the diagram: ``{(site, view, side): (x, y)}`` in cm.

    Muscle sites (:data:`SITES`) and structure sites (:data:`STRUCTURE_SITES`). A centre that
    falls outside its (concave) region is moved to the nearest point well inside it, so each
    centre lies in the intended muscle or structure.
    """
    atlas = atlas or load_atlas()
    centres: dict[tuple[str, str, str], tuple[float, float]] = {}
    for sites in (SITES, STRUCTURE_SITES):
        t = _targets(atlas, sites)
        for (s, view, side), row in t.key.items():
            centres[(sites[s].name, view, side)] = (float(t.cx[row]), float(t.cy[row]))
    return centres


def _targets(atlas: Atlas, sites: Sequence[Site] = SITES) -> _Targets:
    key: dict[tuple[int, str, str], int] = {}
    region: list[int] = []
    views: list[str] = []
    layers: list[str] = []
    cx: list[float] = []
    cy: list[float] = []
    sd: list[float] = []
    for s, site in enumerate(sites):
        for kind, _w, fu, fy in site.views:
            for side in model.SIDES:
                view = _view_for(kind, side)
                reg = atlas.region(view, site.muscle, side, site.layer)
                xmin, ymin, xmax, ymax = reg.polygon.bounds
                sign = _outward_sign(atlas, view, side)
                x = xmin + fu * (xmax - xmin) if sign > 0 else xmax - fu * (xmax - xmin)
                y = ymin + fy * (ymax - ymin)
                x, y = round(x, 2), round(y, 2)
                if atlas.classify(view, [x], [y], site.layer)[0] != reg.index:
                    inner = reg.polygon.buffer(-min(0.4, site.sd_cm / 2))
                    if inner.is_empty:
                        inner = reg.polygon
                    near = nearest_points(inner, Point(x, y))[0]
                    x, y = round(near.x, 2), round(near.y, 2)
                    if atlas.classify(view, [x], [y], site.layer)[0] != reg.index:
                        p = reg.polygon.representative_point()
                        x, y = round(p.x, 2), round(p.y, 2)
                key[(s, view, side)] = len(region)
                region.append(reg.index)
                views.append(view)
                layers.append(site.layer)
                cx.append(x)
                cy.append(y)
                sd.append(site.sd_cm)
    return _Targets(key, np.array(region), views, layers, np.array(cx), np.array(cy), np.array(sd))


def _sample_positions(
    atlas: Atlas, targets: _Targets, rows: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Jittered positions around each row's site centre, all inside the intended region.

    Candidates are drawn for every mark at once and classified per view and layer with the
    vectorised atlas; those that miss the intended region are drawn again (a few rounds), and
    the last stragglers, if any, take the site centre. Coordinates are rounded to 0.1 mm
    before classification, so the stored values are exactly the tested ones.
    """
    n = len(rows)
    xs = np.empty(n)
    ys = np.empty(n)
    todo = np.arange(n)
    pairs = list(zip(targets.view, targets.layer, strict=True))
    groups = sorted(set(pairs))  # (view, layer): one vectorised classify call each
    row_group = np.array([groups.index(pair) for pair in pairs], dtype=np.int64)
    for _ in range(25):
        if not len(todo):
            break
        r = rows[todo]
        cand_x = np.round(targets.cx[r] + rng.normal(0.0, 1.0, len(r)) * targets.sd[r], 2)
        cand_y = np.round(targets.cy[r] + rng.normal(0.0, 1.0, len(r)) * targets.sd[r], 2)
        hit = np.zeros(len(r), dtype=bool)
        g_of = row_group[r]
        for g, (view, layer) in enumerate(groups):
            sel = np.flatnonzero(g_of == g)
            if len(sel):
                got = atlas.classify(view, cand_x[sel], cand_y[sel], layer)
                hit[sel] = got == targets.region[r[sel]]
        done = todo[hit]
        xs[done] = cand_x[hit]
        ys[done] = cand_y[hit]
        todo = todo[~hit]
    if len(todo):
        xs[todo] = targets.cx[rows[todo]]
        ys[todo] = targets.cy[rows[todo]]
    return xs, ys


# --------------------------------------------------------------------------------------------
# The cohort
# --------------------------------------------------------------------------------------------


def _choice(rng: np.random.Generator, options: Sequence[Any], weights: Sequence[float]) -> Any:
    p = np.asarray(weights, dtype=float)
    return options[int(rng.choice(len(options), p=p / p.sum()))]


def _other(side: str) -> str:
    return "right" if side == "left" else "left"


@dataclass(slots=True)
class _Entry:
    """One treated muscle on one side of one patient, recurring over the sessions."""

    muscle: str
    side: str
    primary_site: int  # index into SITES
    active: bool


def _pick_side(rng: np.random.Generator, affected: str, rule: str) -> list[str]:
    if affected == "both":
        if rule == "affected" and rng.random() < 0.5:
            return ["left", "right"]
        return [_choice(rng, model.SIDES, (1, 1))]
    if rule == "contralateral":
        return [_other(affected) if rng.random() < 0.8 else affected]
    return [affected if rng.random() < 0.88 else _other(affected)]


def _entries_for(
    rng: np.random.Generator, condition: str, affected: str, group: MuscleGroup
) -> list[_Entry]:
    names = [m for m, _ in group.muscles]
    chosen = [m for m, p in group.muscles if rng.random() < p]
    if not chosen:
        chosen = [_choice(rng, names, [p for _, p in group.muscles])]
    entries = []
    active_share = 0.55 if condition in ("patellofemoral_pain", "lateral_knee_pain") else 0.4
    for muscle in chosen:
        sites = _SITES_BY_MUSCLE[muscle]
        primary = _choice(rng, sites, [SITES[s].weight for s in sites])
        for side in _pick_side(rng, affected, group.side):
            active = rng.random() < (active_share if group.side == "affected" else 0.3)
            entries.append(_Entry(muscle, side, primary, bool(active)))
    return entries


def _personal_plan(rng: np.random.Generator, condition: str, affected: str) -> list[_Entry]:
    plan = PLANS[condition]
    entries: list[_Entry] = []
    for group in plan:
        if rng.random() < group.prevalence:
            entries.extend(_entries_for(rng, condition, affected, group))
    if not entries:
        top = max(plan, key=lambda g: g.prevalence)
        entries = _entries_for(rng, condition, affected, top)
    return entries


def _nprs_course(
    rng: np.random.Generator, baseline: int, n: int, responder: bool
) -> list[tuple[int, int]]:
    """NPRS before/after for ``n`` sessions; the episode's change decides responder status."""
    if responder:
        end = baseline - int(rng.integers(2, min(6, baseline) + 1))
    else:
        end = min(10, baseline - int(rng.choice([-1, 0, 0, 1, 1])))
    out = []
    for j in range(n):
        frac = (j / (n - 1)) ** 0.8 if n > 1 else 1.0
        level = baseline + (end - baseline) * frac
        before = baseline if j == 0 else int(np.clip(round(level + rng.normal(0, 0.6)), 0, 10))
        drop = int(rng.choice([0, 1, 1, 2] if responder else [0, 0, 1]))
        after = max(0, before - drop)
        if j == n - 1:
            after = end
            before = max(before, end)
        out.append((before, after))
    return out


_OUTCOME_BASELINE: dict[str, tuple[float, float]] = {  # mean, sd at baseline
    "kujala": (68.0, 9.0),
    "womac_function": (32.0, 9.0),
    "lefs": (50.0, 9.0),
}


def _outcome_scores(
    rng: np.random.Generator, instrument: str, responder: bool
) -> tuple[float, float]:
    spec = model.OUTCOME_INSTRUMENTS[instrument]
    mean, sd = _OUTCOME_BASELINE[instrument]
    # Whole points of room for a responder's gain: a clipped baseline stays a whole score
    # (WOMAC 16, not 16.25), as questionnaire totals are.
    room = float(np.ceil(spec.mcid * 1.3))
    if spec.direction is model.Direction.HIGHER_IS_BETTER:
        base = float(np.clip(round(rng.normal(mean, sd)), spec.minimum, spec.maximum - room))
    else:
        base = float(np.clip(round(rng.normal(mean, sd)), spec.minimum + room, spec.maximum))
    if responder:
        gain = spec.mcid + abs(rng.normal(0.6, 0.4)) * spec.mcid
    else:
        gain = rng.uniform(-0.3, 0.7) * spec.mcid
    gain = round(gain, 0 if spec.mcid >= 5 else 1)
    if responder and gain < spec.mcid:
        gain = float(np.ceil(spec.mcid))
    if not responder and gain >= spec.mcid:
        gain = float(np.floor(spec.mcid) - 1)
    end = base - gain if spec.direction is model.Direction.LOWER_IS_BETTER else base + gain
    end = float(np.clip(end, spec.minimum, spec.maximum))
    return base, end


def _follow_up_score(
    rng: np.random.Generator, instrument: str, base: float, end: float, progress: float
) -> float:
    """A follow-up score ``progress`` of the way from ``base`` to ``end`` (the last one
    exactly ``end``, so responder status holds), earlier ones with some noise."""
    if progress >= 1.0:
        return end
    spec = model.OUTCOME_INSTRUMENTS[instrument]
    value = base + (end - base) * progress + rng.normal(0.0, 0.35 * spec.mcid)
    return float(np.clip(round(value), spec.minimum, spec.maximum))


def _structure_plan(
    rng: np.random.Generator, condition: str, affected: str
) -> list[tuple[int, str]]:
    """The structures a patient has needled: ``(index into STRUCTURE_SITES, side)`` pairs."""
    plan = STRUCTURE_PLANS.get(condition)
    if plan is None or rng.random() >= plan.prevalence:
        return []
    lo, hi = plan.count
    k = min(int(rng.integers(lo, hi + 1)), len(plan.sites))
    chosen = sorted(rng.choice(len(plan.sites), size=k, replace=False).tolist())
    if affected == "both":
        sides = list(model.SIDES) if rng.random() < 0.5 else [_choice(rng, model.SIDES, (1, 1))]
    else:
        sides = [affected]
    index = {site.name: i for i, site in enumerate(STRUCTURE_SITES)}
    return [(index[plan.sites[c]], side) for c in chosen for side in sides]


def generate_demo(
    store: Any,
    *,
    seed: int = 1,
    patients: int = 200,
    sessions: tuple[int, int] = (3, 6),
    marks_per_session: float | None = None,
    start: dt.date | None = None,
    atlas: Atlas | None = None,
) -> DemoSummary:
    """Write a synthetic cohort into ``store`` and return what was written.

    Parameters
    ----------
    store
        A :class:`tpmap.store.Store`.
    seed
        Random seed: the same seed gives the same cohort (all draws from one
        ``numpy.random.default_rng(seed)``).
    patients
        Number of patients (codes ``DEMO-0001`` ...; numbering continues after any demo
        patients already in the store).
    sessions
        Inclusive range of sessions per episode, about a week apart.
    marks_per_session
        Mean number of marks per session (Poisson). By default it follows from each
        condition's treated muscles (about 5-6, about 12-13 before knee arthroplasty); set it
        to build a large benchmark cohort.
    start
        Earliest episode start; episodes start over the following ~18 months. The default
        :data:`DEFAULT_START` keeps every date in the past.
    atlas
        The body atlas (default :func:`tpmap.load_atlas`).
    """
    lo, hi = sessions
    if patients < 0 or lo < 1 or hi < lo:
        raise ValueError("need patients >= 0 and 1 <= sessions[0] <= sessions[1]")
    if marks_per_session is not None and marks_per_session < 0:
        raise ValueError("marks_per_session must not be negative")
    atlas = atlas or load_atlas()
    start = start or DEFAULT_START
    rng = np.random.default_rng(seed)
    targets = _targets(atlas)
    first_number = _next_demo_number(store)

    conditions = list(CONDITION_MIX)
    cond_p = np.array(list(CONDITION_MIX.values()))
    cond_p = cond_p / cond_p.sum()

    patient_rows: list[dict[str, Any]] = []
    episode_rows: list[dict[str, Any]] = []
    session_rows: list[dict[str, Any]] = []
    session_episode: list[int] = []  # index into episode_rows
    ppt_rows: list[tuple[int, dict[str, Any]]] = []  # (session index, row)
    adverse_rows: list[tuple[int, dict[str, Any]]] = []
    outcome_rows: list[tuple[int, dict[str, Any]]] = []  # (episode index, row)
    # Per mark, filled session by session; details are drawn vectorised afterwards.
    mark_session: list[int] = []
    mark_entry: list[int] = []
    entries: list[_Entry] = []
    entry_condition: list[str] = []

    ae_types = [t for t, _ in _ADVERSE_RATES]
    ae_rates = np.array([r for _, r in _ADVERSE_RATES])

    # Structure marks and follow-up scores draw from a second stream of the same seed, so
    # that the first stream's draws (and with them a seed's muscle marks) stay as they were.
    srng = np.random.default_rng([seed, 1])
    s_targets = _targets(atlas, STRUCTURE_SITES)
    s_mark_session: list[int] = []
    s_mark_site: list[int] = []
    s_mark_side: list[str] = []

    for p in range(patients):
        condition = conditions[int(rng.choice(len(conditions), p=cond_p))]
        people = _PEOPLE[condition]
        if rng.random() < people.both_sides:
            affected = "both"
        else:
            affected = "left" if rng.random() < 0.47 else "right"
        ep_start = start + dt.timedelta(days=int(rng.integers(0, ENROLMENT_DAYS)))
        age = int(rng.integers(people.age[0], people.age[1] + 1))
        sex = "female" if rng.random() < people.female else "male"
        patient_rows.append(
            {"code": f"DEMO-{first_number + p:04d}", "sex": sex, "birth_year": ep_start.year - age}
        )
        episode_rows.append(
            {
                "patient_id": None,
                "condition": condition,
                "affected_side": affected,
                "start_date": ep_start,
                "symptom_duration_weeks": int(rng.integers(*people.symptom_weeks)),
                "note": "Synthetic demo patient",
            }
        )
        e = len(episode_rows) - 1

        plan = _personal_plan(rng, condition, affected)
        first_entry = len(entries)
        entries.extend(plan)
        entry_condition.extend([condition] * len(plan))
        plan_ids = np.arange(first_entry, len(entries))
        structures = _structure_plan(srng, condition, affected)

        responder = bool(rng.random() < _RESPONDER_SHARE)
        n_sessions = int(rng.integers(lo, hi + 1))
        baseline = int(np.clip(round(rng.normal(people.nprs, 1.3)), 3, 9))
        course = _nprs_course(rng, baseline, n_sessions, responder)
        clinician = _CLINICIANS[int(rng.integers(len(_CLINICIANS)))]
        ppt_sides = ["left", "right"] if affected == "both" else [affected]
        ppt_base = {
            (site, side): float(rng.normal(3.6 if sex == "male" else 3.0, 0.6))
            for site in people.ppt_sites
            for side in ppt_sides
        }

        date = ep_start
        for j in range(n_sessions):
            if j:
                date = date + dt.timedelta(days=int(rng.integers(5, 11)))
            s = len(session_rows)
            before, after = course[j]
            who = clinician if rng.random() < 0.9 else _CLINICIANS[int(rng.integers(5))]
            session_rows.append(
                {
                    "episode_id": None,
                    "date": date,
                    "clinician": who,
                    "nprs_before": before,
                    "nprs_after": after,
                    "note": "",
                }
            )
            session_episode.append(e)

            # Which of the patient's muscles today: most of them, now and then another one.
            present = plan_ids[rng.random(len(plan_ids)) < 0.88]
            if not len(present):
                present = plan_ids
            present_list = present.tolist()
            if rng.random() < 0.08:
                extra_group = _choice(
                    rng, PLANS[condition], [g.prevalence for g in PLANS[condition]]
                )
                extra = _entries_for(rng, condition, affected, extra_group)[:1]
                entries.extend(extra)
                entry_condition.extend([condition] * len(extra))
                present_list.extend(range(len(entries) - len(extra), len(entries)))
            k = len(present_list)
            if marks_per_session is None:
                counts = 1 + rng.poisson(people.extra_marks, k)
            else:
                total = int(rng.poisson(marks_per_session))
                counts = np.zeros(k, dtype=np.int64)
                if total:
                    base = rng.permutation(k)[: min(total, k)]
                    counts[base] = 1
                    if total > k:
                        counts += rng.multinomial(total - k, np.full(k, 1.0 / k))
            mark_session.extend([s] * int(counts.sum()))
            mark_entry.extend(np.repeat(present_list, counts).tolist())
            # The patient's structures, one mark each, in most sessions.
            for site_i, side in structures:
                if srng.random() < 0.85:
                    s_mark_session.append(s)
                    s_mark_site.append(site_i)
                    s_mark_side.append(side)

            # Pressure pain thresholds: higher (better) as a responder improves.
            progress = (j / max(1, n_sessions - 1)) * (0.3 if responder else 0.03)
            for (site, side), base_kg in ppt_base.items():
                kg = base_kg * (1 + progress) + rng.normal(0, 0.25)
                row = {"site": site, "side": side, "kg_cm2": round(float(np.clip(kg, 0.5, 12)), 2)}
                ppt_rows.append((s, row))

            # Adverse events (Brady 2014 rates per treatment).
            for t in np.flatnonzero(rng.random(len(ae_rates)) < ae_rates):
                severe = rng.random() < _SIGNIFICANT_PER_TREATMENT / ae_rates.sum()
                adverse_rows.append(
                    (s, {"type": ae_types[t], "severity": "significant" if severe else "mild"})
                )

        # Outcome measures at baseline and at 2, 6 and 12 weeks, ending where responder
        # status says; a patient lost to follow-up stops after the 2-week visit, or before.
        scores: list[tuple[str, float, float]] = [("nprs", course[0][0], course[-1][1])]
        if people.instrument:
            scores.append((people.instrument, *_outcome_scores(rng, people.instrument, responder)))
        visits = [
            ep_start + dt.timedelta(days=days - int(srng.integers(0, early + 1)))
            for days, early in FOLLOW_UP_DAYS
        ]
        if srng.random() < LOST_TO_FOLLOW_UP:
            visits = visits[: int(srng.integers(0, 2))]
        for instrument, score_base, score_end in scores:
            outcome_rows.append(
                (e, {"instrument": instrument, "score": score_base, "date": ep_start})
            )
            for date_v, progress in zip(visits, _FOLLOW_UP_PROGRESS, strict=False):
                score = _follow_up_score(srng, instrument, score_base, score_end, progress)
                outcome_rows.append((e, {"instrument": instrument, "score": score, "date": date_v}))

    last = max(
        (row["date"] for row in [*session_rows, *(row for _, row in outcome_rows)]),
        default=start,
    )
    if last > dt.date.today():
        raise ValueError(
            f"with start={start} the cohort's sessions and follow-ups would run until {last}, "
            "after today: "
            "choose an earlier start"
        )
    marks = _mark_rows(atlas, targets, rng, entries, entry_condition, mark_entry)
    if s_mark_session:
        s_marks = _structure_mark_rows(atlas, s_targets, srng, s_mark_site, s_mark_side)
        marks, mark_session = _merge_marks(marks, mark_session, s_marks, s_mark_session)

    # Write, parents first, mapping list positions to the new ids. Patients are dealt to the
    # demo clinics in turn (no random draw, so a seed still means the same cohort).
    clinic_ids = _demo_clinics(store)
    for p, row in enumerate(patient_rows):
        row["clinic_id"] = clinic_ids[(first_number + p - 1) % len(clinic_ids)]
    patient_ids = store.bulk_insert_patients(patient_rows, user=_USER)
    for row, pid in zip(episode_rows, patient_ids, strict=True):
        row["patient_id"] = pid
    episode_ids = store.bulk_insert_episodes(episode_rows, user=_USER)
    for row, e in zip(session_rows, session_episode, strict=True):
        row["episode_id"] = episode_ids[e]
    session_ids = store.bulk_insert_sessions(session_rows, user=_USER)
    n_marks = store.bulk_insert_marks(
        _with_session(marks, mark_session, session_ids),
        user=_USER,
        # Generated marks are valid by construction (tests/test_demo.py runs every one
        # through model.validate_mark_fields); per-row validation would cost ~0.1 ms a mark.
        validate=False,
    )
    n_ppt = store.bulk_insert_pressure_pain_thresholds(
        {"session_id": session_ids[s], **row} for s, row in ppt_rows
    )
    n_ae = store.bulk_insert_adverse_events(
        {"session_id": session_ids[s], **row} for s, row in adverse_rows
    )
    n_out = store.bulk_insert_outcomes(
        {"episode_id": episode_ids[e], **row} for e, row in outcome_rows
    )
    return DemoSummary(
        seed=seed,
        patients=len(patient_ids),
        episodes=len(episode_ids),
        sessions=len(session_ids),
        marks=n_marks,
        pressure_pain_thresholds=n_ppt,
        adverse_events=n_ae,
        outcomes=n_out,
    )


def _demo_clinics(store: Any) -> list[int]:
    """The ids of :data:`DEMO_CLINICS`, created when missing."""
    existing = {c.name: c.id for c in store.list_clinics()}
    return [
        existing[name] if name in existing else store.add_clinic(name, user=_USER).id
        for name in DEMO_CLINICS
    ]


def create_demo_accounts(store: Any) -> bool:
    """Create :data:`DEMO_ACCOUNTS` (password :data:`DEMO_PASSWORD`) in a store without accounts.

    Returns True when they were created; a store that already has any account is left alone,
    so a real clinic's database never gets accounts with a published password.
    """
    if store.list_users():
        return False
    _demo_clinics(store)
    for name, roles, clinics in DEMO_ACCOUNTS:
        store.add_user(name, DEMO_PASSWORD, roles=roles, clinics=clinics, user=_USER)
    return True


def demo_accounts_text() -> str:
    """The demo accounts and their password, as ``make serve`` prints them."""
    lines = [f"Demo accounts (password: {DEMO_PASSWORD}):"]
    for name, roles, clinics in DEMO_ACCOUNTS:
        where = f" at {', '.join(clinics)}" if clinics else ""
        lines.append(f"  {name:<6} {' + '.join(roles)}{where}")
    return "\n".join(lines)


def _next_demo_number(store: Any) -> int:
    """1, or one after the highest DEMO-nnnn code already stored (``tpmap demo --force``)."""
    from sqlalchemy import select

    from tpmap.store.schema import PatientRow

    with store.engine.connect() as conn:
        codes = conn.execute(
            select(PatientRow.code).where(PatientRow.code.like("DEMO-%"))
        ).scalars()
        numbers = [int(c[5:]) for c in codes if c[5:].isdigit()]
    return max(numbers, default=0) + 1


def _with_session(
    marks: dict[str, list[Any]], mark_session: list[int], session_ids: list[int]
) -> Iterator[dict[str, Any]]:
    names = list(marks)
    for s, values in zip(mark_session, zip(*marks.values(), strict=True), strict=True):
        row = dict(zip(names, values, strict=True))
        row["session_id"] = session_ids[s]
        yield row


def _pick(rng: np.random.Generator, n: int, p: Sequence[float]) -> np.ndarray:
    """``n`` draws of an option index with probabilities ``p`` (normalised)."""
    w = np.asarray(p, dtype=float)
    return rng.choice(len(w), size=n, p=w / w.sum())


def _none_where(values: np.ndarray, missing: np.ndarray) -> list[Any]:
    out = values.tolist()
    for i in np.flatnonzero(missing).tolist():
        out[i] = None
    return out


_TECHNIQUES = ("static", "pistoning", "electrical", "periosteal_electrical")
_LTR = ("none", "weak", "medium", "strong")
_LTR_HIT = np.array([0.0, 0.2, 0.4, 0.6])  # chance that a further insertion twitches, by grade


def _mark_rows(
    atlas: Atlas,
    targets: _Targets,
    rng: np.random.Generator,
    entries: list[_Entry],
    entry_condition: list[str],
    mark_entry_list: list[int],
) -> dict[str, list[Any]]:
    """All marks' columns as lists (positions and STRICTA details), drawn vectorised."""
    n = len(mark_entry_list)
    me = np.asarray(mark_entry_list, dtype=np.int64)
    muscles = sorted(_SITES_BY_MUSCLE)
    e_muscle = np.array([muscles.index(e.muscle) for e in entries], dtype=np.int64)
    e_side = np.array([model.SIDES.index(e.side) for e in entries], dtype=np.int64)
    e_primary = np.array([e.primary_site for e in entries], dtype=np.int64)
    e_active = np.array([e.active for e in entries], dtype=bool)
    e_oa = np.array([c == "knee_osteoarthritis" for c in entry_condition], dtype=bool)
    m_muscle, m_side = e_muscle[me], e_side[me]

    # Site: mostly the patient's usual one for that muscle, sometimes another of its sites.
    site = e_primary[me].copy()
    other = np.flatnonzero(rng.random(n) >= 0.7)
    for mi, name in enumerate(muscles):
        sel = other[m_muscle[other] == mi]
        options = _SITES_BY_MUSCLE[name]
        if len(sel) and len(options) > 1:
            site[sel] = np.asarray(options)[
                _pick(rng, len(sel), [SITES[o].weight for o in options])
            ]

    # View the site is needled on, then the (site, view, side) target to aim at.
    row = np.empty(n, dtype=np.int64)
    for s, spec in enumerate(SITES):
        sel = np.flatnonzero(site == s)
        if not len(sel):
            continue
        kind = _pick(rng, len(sel), [w for _, w, _, _ in spec.views])
        lookup = np.array(
            [
                [targets.key[(s, _view_for(k, side), side)] for side in model.SIDES]
                for k, _, _, _ in spec.views
            ]
        )
        row[sel] = lookup[kind, m_side[sel]]
    xs, ys = _sample_positions(atlas, targets, row, rng)

    # What the app stores: the region the atlas puts the point in.
    region = targets.region[row]
    reg_muscle = np.array([r.muscle for r in atlas.regions], dtype=object)
    reg_side = np.array([r.side for r in atlas.regions], dtype=object)
    reg_layer = np.array([r.layer for r in atlas.regions], dtype=object)
    reg_view = np.array([r.view for r in atlas.regions], dtype=object)

    # Technique: pistoning mostly, electrical about 15 %, more electrical around the knee in
    # osteoarthritis (Dunning 2018). Periosteal electrical needling is recorded on the
    # periosteal sites themselves (structure marks), never on a muscle.
    knee = np.array([s.near_knee for s in SITES], dtype=bool)[site]
    p_tech = np.tile([0.15, 0.70, 0.15, 0.0], (n, 1))
    p_tech[e_oa[me]] = [0.15, 0.65, 0.20, 0.0]
    p_tech[e_oa[me] & knee] = [0.10, 0.45, 0.45, 0.0]
    tech = (rng.random(n)[:, None] > np.cumsum(p_tech, axis=1)).sum(axis=1)
    tech = np.minimum(tech, 3)
    piston, static = tech == 1, tech == 0
    electrical, periosteal = tech == 2, tech == 3
    estim = electrical | periosteal

    insertions = np.ones(n, dtype=np.int64)
    insertions[piston] = rng.integers(3, 13, piston.sum())
    insertions[electrical] = rng.integers(1, 3, electrical.sum())

    grade = np.zeros(n, dtype=np.int64)
    grade[piston] = _pick(rng, int(piston.sum()), [0.20, 0.35, 0.30, 0.15])
    slow = static | electrical
    grade[slow] = _pick(rng, int(slow.sum()), [0.50, 0.30, 0.15, 0.05])
    count = np.where(grade > 0, 1 + rng.binomial(np.maximum(insertions - 1, 1), _LTR_HIT[grade]), 0)

    depth_lo = np.array([_DEPTH_MM[m][0] for m in muscles])[m_muscle]
    depth_hi = np.array([_DEPTH_MM[m][1] for m in muscles])[m_muscle]
    depth = np.round(depth_lo + rng.random(n) * (depth_hi - depth_lo))
    length_at = np.searchsorted(_NEEDLE_LENGTHS_MM, depth + 5)
    length_at = np.minimum(length_at + (rng.random(n) < 0.2), len(_NEEDLE_LENGTHS_MM) - 1)
    length = _NEEDLE_LENGTHS_MM[length_at]
    thick = rng.random(n) < np.where(length >= 60, 0.7, 0.25)
    gauge = np.where(thick, 0.30, 0.25)

    retention = np.zeros(n)
    retention[static] = rng.integers(5, 21, static.sum())
    retention[electrical] = rng.integers(10, 21, electrical.sum())
    retention[periosteal] = rng.integers(15, 31, periosteal.sum())
    freq = np.array([2.0, 4.0, 10.0, 80.0, 100.0])[_pick(rng, n, [0.4, 0.1, 0.15, 0.15, 0.2])]
    freq[periosteal] = 2.0
    intensity = np.round(1.0 + rng.random(n) * 7.0, 1)
    intensity[periosteal] = np.round(1.0 + rng.random(int(periosteal.sum())) * 4.0, 1)

    active = rng.random(n) < np.where(e_active[me], 0.8, 0.1)
    referral = rng.random(n) < np.where(active, 0.6, 0.15)

    return {
        "view": reg_view[region].tolist(),
        "x": xs.tolist(),
        "y": ys.tolist(),
        "muscle": reg_muscle[region].tolist(),
        "side": reg_side[region].tolist(),
        "layer": reg_layer[region].tolist(),
        "atlas_version": [atlas.version] * n,
        "muscle_overridden": [False] * n,
        "technique": np.array(_TECHNIQUES, dtype=object)[tech].tolist(),
        "insertions": insertions.tolist(),
        "ltr_grade": np.array(_LTR, dtype=object)[grade].tolist(),
        "ltr_count": count.tolist(),
        "depth_mm": depth.tolist(),
        "needle_length_mm": length.tolist(),
        "needle_gauge_mm": gauge.tolist(),
        "retention_min": retention.tolist(),
        "estim_frequency_hz": _none_where(freq, ~estim),
        "estim_intensity_ma": _none_where(intensity, ~estim),
        "estim_duration_min": _none_where(retention, ~estim),
        "tp_status": np.where(active, "active", "latent").astype(object).tolist(),
        "referral_reproduced": referral.tolist(),
        "note": [""] * n,
    }


# Depth to the ligament, or through thin soft tissue to the bone (mm).
_STRUCTURE_DEPTH_MM: dict[str, tuple[float, float]] = {
    "mpfl": (8, 18),
    "medial_joint_line": (8, 15),
    "lateral_joint_line": (8, 15),
    "medial_epicondyle": (5, 12),
    "lateral_epicondyle": (5, 12),
    "adductor_tubercle": (8, 15),
    "pes_anserinus": (8, 15),
    "patellar_borders": (3, 8),
}


def _structure_mark_rows(
    atlas: Atlas,
    targets: _Targets,
    rng: np.random.Generator,
    site_list: list[int],
    side_list: list[str],
) -> dict[str, list[Any]]:
    """Structure marks' columns, as :func:`_mark_rows` gives them for muscles.

    Periosteal sites: periosteal electrical dry needling after Dunning 2018 (one insertion to
    the bone, 2 Hz, intensity to tolerance, 15-30 min, 0.30 mm needles). The MPFL: mostly a
    few pistoning passes, else a static or an electrical needle. Ligament and bone give no
    twitch response and are no trigger points (``tp_status`` left empty).
    """
    n = len(site_list)
    site = np.asarray(site_list, dtype=np.int64)
    side = np.array([model.SIDES.index(x) for x in side_list], dtype=np.int64)
    lookup = np.array(
        [
            [targets.key[(s, "anterior", sd)] for sd in model.SIDES]
            for s in range(len(STRUCTURE_SITES))
        ]
    )
    row = lookup[site, side]
    xs, ys = _sample_positions(atlas, targets, row, rng)
    region = targets.region[row]
    reg_muscle = np.array([r.muscle for r in atlas.regions], dtype=object)[region]

    ligament = reg_muscle == "mpfl"
    tech = np.full(n, _TECHNIQUES.index("periosteal_electrical"), dtype=np.int64)
    tech[ligament] = _pick(rng, int(ligament.sum()), [0.30, 0.55, 0.15, 0.0])
    static, piston = tech == 0, tech == 1
    electrical, periosteal = tech == 2, tech == 3
    estim = electrical | periosteal

    insertions = np.ones(n, dtype=np.int64)
    insertions[piston] = rng.integers(2, 6, int(piston.sum()))
    lo = np.array([_STRUCTURE_DEPTH_MM[m][0] for m in reg_muscle])
    hi = np.array([_STRUCTURE_DEPTH_MM[m][1] for m in reg_muscle])
    depth = np.round(lo + rng.random(n) * (hi - lo))
    # 25 mm needles for the MPFL, 30 mm to the bone; a longer one now and then.
    longer = rng.random(n) < 0.2
    length = np.where(ligament, 25.0, 30.0) + np.where(longer, np.where(ligament, 5.0, 10.0), 0)
    gauge = np.where(periosteal, 0.30, 0.25)
    retention = np.zeros(n)
    retention[static] = rng.integers(5, 16, int(static.sum()))
    retention[electrical] = rng.integers(10, 21, int(electrical.sum()))
    retention[periosteal] = rng.integers(15, 31, int(periosteal.sum()))
    freq = np.where(periosteal, 2.0, np.where(rng.random(n) < 0.5, 2.0, 10.0))
    intensity = np.round(1.0 + rng.random(n) * np.where(periosteal, 4.0, 3.0), 1)
    referral = np.where(ligament, rng.random(n) < 0.3, False).astype(object)
    referral[~ligament] = None  # a periosteal point has no referral pattern to reproduce

    return {
        "view": np.array(targets.view, dtype=object)[row].tolist(),
        "x": xs.tolist(),
        "y": ys.tolist(),
        "muscle": reg_muscle.tolist(),
        "side": np.array([r.side for r in atlas.regions], dtype=object)[region].tolist(),
        "layer": np.array([r.layer for r in atlas.regions], dtype=object)[region].tolist(),
        "atlas_version": [atlas.version] * n,
        "muscle_overridden": [False] * n,
        "technique": np.array(_TECHNIQUES, dtype=object)[tech].tolist(),
        "insertions": insertions.tolist(),
        "ltr_grade": ["none"] * n,
        "ltr_count": [0] * n,
        "depth_mm": depth.tolist(),
        "needle_length_mm": length.tolist(),
        "needle_gauge_mm": gauge.tolist(),
        "retention_min": retention.tolist(),
        "estim_frequency_hz": _none_where(freq, ~estim),
        "estim_intensity_ma": _none_where(intensity, ~estim),
        "estim_duration_min": _none_where(retention, ~estim),
        "tp_status": [None] * n,
        "referral_reproduced": referral.tolist(),
        "note": [""] * n,
    }


def _merge_marks(
    a: dict[str, list[Any]], a_session: list[int], b: dict[str, list[Any]], b_session: list[int]
) -> tuple[dict[str, list[Any]], list[int]]:
    """Both sets of mark columns in session order (stable: each session's muscle marks
    first), so that marks are stored session by session as a clinician would add them."""
    sessions = np.asarray(a_session + b_session, dtype=np.int64)
    order = np.argsort(sessions, kind="stable")
    merged = {}
    for name in a:
        column = np.empty(len(order), dtype=object)
        column[:] = a[name] + b[name]
        merged[name] = column[order].tolist()
    return merged, sessions[order].tolist()
