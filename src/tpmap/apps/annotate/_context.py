"""What every part of the clinician page shares: the store, the atlas, who is signed in,
the worker that runs store calls, the status line and the open session."""

from __future__ import annotations

from dataclasses import dataclass

from bokeh.document import Document

from tpmap.apps.annotate._runner import Runner
from tpmap.apps.annotate._state import SessionState
from tpmap.apps.annotate._status import StatusLine
from tpmap.atlas import Atlas
from tpmap.store import ScopedStore

__all__ = ["Context"]


@dataclass
class Context:
    """The shared services of one page (one browser tab)."""

    doc: Document
    store: ScopedStore  # the signed-in clinician's view of the record
    atlas: Atlas
    user: str
    run: Runner
    status: StatusLine
    state: SessionState

    def label(self, muscle: str, side: str) -> str:
        """A mark's muscle as clinicians read it: ``Vastus medialis obliquus (right)``."""
        return f"{self.atlas.muscle_name(muscle)} ({side})"
