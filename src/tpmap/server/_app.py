"""Build a `bokeh.server.server.Server` serving tpmap's pages.

Each page is a `make_document(doc, **context)` function wrapped in a Bokeh Application;
nothing is created at import time, and the only state shared between documents is the
store (the database) and the atlas (read-only).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler
from bokeh.server.server import Server
from tornado.web import RedirectHandler

from tpmap.atlas import load_atlas
from tpmap.store import open_store

log = logging.getLogger("tpmap.server")

__all__ = ["Settings", "build_server", "run"]


@dataclass(frozen=True)
class Settings:
    """Everything a running tpmap needs to know, in one place.

    Attributes
    ----------
    database_url : str or None
        SQLAlchemy URL; None means the default SQLite file in the user's data directory.
    host, port : str, int
        Where to listen. Port 0 picks a free port.
    user : str
        Recorded as the creator of marks (until sign-in arrives).
    min_patients : int
        The floor of small-cell suppression (k) for research outputs: the researcher page and
        its downloads use ``max(requested, min_patients)``.
    snapshot_dir : str or None
        Directory of the research data's Parquet snapshots (and the perturbation key);
        None means ``$TPMAP_SNAPSHOT_DIR``, else the user cache directory.
    """

    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 5006
    user: str = "clinician"
    min_patients: int = 5
    snapshot_dir: str | None = None
    extra_origins: tuple[str, ...] = field(default_factory=tuple)


def _pages() -> dict[str, Callable[..., None]]:
    # Imported here so that importing tpmap.server does not pull in every page.
    from tpmap.apps import annotate, diagram, explore

    return {
        "/annotate": annotate.make_document,
        "/explore": explore.make_document,
        "/atlas": diagram.make_document,
    }


def _enable_nodelay() -> None:
    """Send websocket frames at once (TCP_NODELAY) on Bokeh's websocket connections.

    Bokeh writes each message as several websocket frames (header, metadata, content).
    With Nagle's algorithm on, the second frame waits for the peer to acknowledge the first,
    and delayed acknowledgement holds that for about 40 ms: every update a tap causes would
    reach the browser 40 ms late. Idempotent.
    """
    from bokeh.server.views.ws import WSHandler

    if getattr(WSHandler.open, "_tpmap_nodelay", False):
        return
    original = WSHandler.open

    def open(self: WSHandler) -> None:
        self.set_nodelay(True)
        original(self)

    open._tpmap_nodelay = True  # type: ignore[attr-defined]
    WSHandler.open = open  # type: ignore[method-assign]


def _page(make: Callable[..., None], context: dict[str, Any]) -> Callable[[Any], None]:
    # Bokeh wants a handler of exactly one argument, the document.
    def handler(doc: Any) -> None:
        make(doc, **context)

    return handler


def build_server(settings: Settings, *, store: Any = None, **server_kwargs: Any) -> Server:
    """Create (but do not start) the Bokeh server for ``settings``.

    Parameters
    ----------
    settings : Settings
    store : tpmap.store.Store, optional
        An open store; by default one is opened on ``settings.database_url``.
    **server_kwargs
        Passed to `bokeh.server.server.Server` (e.g. ``io_loop``).
    """
    _enable_nodelay()
    atlas = load_atlas()
    threading.Thread(target=atlas.warm, name="tpmap-atlas-warm", daemon=True).start()
    if store is None:
        store = open_store(settings.database_url)
    # One research data set per process, loaded when a researcher page first needs it and
    # shared by every tab (tpmap.research.SharedDataset: no Bokeh, its own worker thread).
    from tpmap.research import SharedDataset, view_grids

    research = SharedDataset(store, snapshot=settings.snapshot_dir, grids=view_grids(atlas))
    context = {"atlas": atlas, "store": store, "settings": settings, "research": research}
    apps = {
        path: Application(FunctionHandler(_page(make, context))) for path, make in _pages().items()
    }
    root = "/annotate"
    origins = [f"{h}:{settings.port}" for h in {settings.host, "localhost", "127.0.0.1"}]
    server = Server(
        apps,
        address=settings.host,
        port=settings.port,
        allow_websocket_origin=[*origins, *settings.extra_origins] if settings.port else ["*"],
        extra_patterns=[(r"/", RedirectHandler, {"url": root})],
        **server_kwargs,
    )
    return server


def run(settings: Settings, *, store: Any = None, on_ready: Callable[[str], None] | None = None):
    """Start the server and block until interrupted."""
    server = build_server(settings, store=store)
    server.start()
    url = f"http://{settings.host}:{server.port}/"
    (on_ready or print)(f"tpmap is serving at {url}  (Ctrl+C to stop)")
    try:
        server.io_loop.start()
    except KeyboardInterrupt:  # pragma: no cover - interactive
        pass
    finally:
        server.stop()
