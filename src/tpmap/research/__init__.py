"""Pure analysis of needling marks across patients: filters, tables, density maps, comparisons.

Everything works on the frames of a :class:`Dataset` (no Bokeh), so that the explore page,
``tpmap heatmap`` and a notebook share one code path. One module per concern:

- frames and loading (:func:`load_dataset`, :class:`Dataset`, :class:`SharedDataset`,
  :func:`compact_marks`; a server's :class:`ResearchProcess`);
- filters (:class:`Filters`, :func:`fold_to_affected_side`);
- proportions and comparisons (:func:`muscle_table`, :func:`compare_groups`,
  :func:`wilson_interval`);
- density (:func:`density_grid`, :func:`difference_grid`, :func:`bin_counts`);
- outcomes (:class:`ResponderRule`, :func:`responders`);
- disclosure control (:class:`DisclosurePolicy`, :func:`check_query`, :class:`CellKey`);
- export (:func:`export_marks`, :func:`export_record`, :data:`EXPORT_COLUMNS`).

The unit of analysis is the patient episode: every mark is analysed with its own episode's
condition, affected side and responder status, and percentages count distinct patients.
Small-cell suppression is applied by every function whose output may be displayed or
exported; docs/privacy.md describes the disclosure rules.

Examples
--------
>>> from tpmap import research
>>> research.Filters(conditions=["patellofemoral_pain"]).active()
('conditions',)
"""

from __future__ import annotations

from tpmap.research._density import (
    DEFAULT_CELL,
    WEIGHTINGS,
    DensityGrid,
    DifferenceGrid,
    GridSpec,
    bin_counts,
    count_cells,
    density_grid,
    difference_grid,
    view_cells,
    view_grids,
)
from tpmap.research._disclosure import (
    DEFAULT_MIN_PATIENTS,
    ROLES,
    CellKey,
    DisclosureError,
    DisclosurePolicy,
    DisclosureWarning,
    QueryCheck,
    check_query,
)
from tpmap.research._export import (
    EXPORT_COLUMNS,
    Export,
    deidentify,
    export_marks,
    export_record,
    withheld_positions,
)
from tpmap.research._filters import Filters, age_band, fold_to_affected_side
from tpmap.research._frames import (
    AGE_BANDS,
    DATASET_MARK_COLUMNS,
    MARK_COLUMNS,
    RESPONDER_STATUSES,
    SESSION_COLUMNS,
    VIEWS,
    compact_marks,
    days_to_dates,
    to_days,
)
from tpmap.research._loading import Dataset, load_dataset
from tpmap.research._outcomes import (
    INSTRUMENTS,
    ResponderRule,
    attach_responders,
    responders,
)
from tpmap.research._process import NICENESS, DatasetSummary, ResearchProcess
from tpmap.research._proportions import (
    BH_FAMILY,
    compare_groups,
    muscle_table,
    wilson_interval,
)
from tpmap.research._shared import SharedDataset

__all__ = [
    "AGE_BANDS",
    "BH_FAMILY",
    "DATASET_MARK_COLUMNS",
    "DEFAULT_CELL",
    "DEFAULT_MIN_PATIENTS",
    "EXPORT_COLUMNS",
    "INSTRUMENTS",
    "MARK_COLUMNS",
    "NICENESS",
    "RESPONDER_STATUSES",
    "ROLES",
    "SESSION_COLUMNS",
    "VIEWS",
    "WEIGHTINGS",
    "CellKey",
    "Dataset",
    "DatasetSummary",
    "DensityGrid",
    "DifferenceGrid",
    "DisclosureError",
    "DisclosurePolicy",
    "DisclosureWarning",
    "Export",
    "Filters",
    "GridSpec",
    "QueryCheck",
    "ResearchProcess",
    "ResponderRule",
    "SharedDataset",
    "age_band",
    "attach_responders",
    "bin_counts",
    "check_query",
    "compact_marks",
    "compare_groups",
    "count_cells",
    "days_to_dates",
    "deidentify",
    "density_grid",
    "difference_grid",
    "export_marks",
    "export_record",
    "fold_to_affected_side",
    "load_dataset",
    "muscle_table",
    "responders",
    "to_days",
    "view_cells",
    "view_grids",
    "wilson_interval",
    "withheld_positions",
]
