"""The Bokeh server: settings, sign-in, routes and the pages it serves."""

from __future__ import annotations

from tpmap.server._app import (
    ServerConfigError,
    Settings,
    build_server,
    is_loopback,
    resolve_secret,
    run,
)
from tpmap.server._auth import COOKIE, TpmapAuth, home_of

__all__ = [
    "COOKIE",
    "ServerConfigError",
    "Settings",
    "TpmapAuth",
    "build_server",
    "home_of",
    "is_loopback",
    "resolve_secret",
    "run",
]
