"""tpmap: map dry-needled trigger points on a leg-and-hip body atlas.

The public Python API. Analysis for notebooks lives in :mod:`tpmap.research`.

>>> import tpmap
>>> tpmap.load_atlas().region_at("posterior", -11.0, 97.0).muscle
'gluteus_medius'
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from tpmap.atlas import Atlas, Landmark, Region, load_atlas

try:
    __version__ = version("tpmap")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = ["Atlas", "Landmark", "Region", "__version__", "load_atlas"]
