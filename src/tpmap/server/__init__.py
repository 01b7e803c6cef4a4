"""The Bokeh server: settings, routes and the pages it serves."""

from __future__ import annotations

from tpmap.server._app import Settings, build_server, run

__all__ = ["Settings", "build_server", "run"]
