"""Build a `bokeh.server.server.Server` serving tpmap's pages behind a sign-in.

Each page is a `make_document(doc, **context)` function wrapped in a Bokeh Application;
nothing is created at import time, and the only state shared between documents is the
store (the database) and the atlas (read-only). Every page gets the signed-in principal as
``user`` (a :class:`tpmap.auth.Principal`), resolved from the signed cookie of the request
that created the Bokeh session; never from a setting.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler
from bokeh.server.server import Server

from tpmap.atlas import Atlas, load_atlas
from tpmap.auth import Principal, Secret, load_secret
from tpmap.server._auth import RootHandler, TpmapAuth, install_websocket_checks
from tpmap.store import Store, open_store

log = logging.getLogger("tpmap.server")

__all__ = [
    "ServerConfigError",
    "Settings",
    "build_server",
    "is_loopback",
    "resolve_secret",
    "run",
]

DEFAULT_IDLE = dt.timedelta(hours=8)


class ServerConfigError(ValueError):
    """The server cannot start with these settings; the message says what to change."""


@dataclass(frozen=True)
class Settings:
    """Everything a running tpmap needs to know, in one place.

    Attributes
    ----------
    database_url : str or None
        SQLAlchemy URL; None means the default SQLite file in the user's data directory.
    host, port : str, int
        Where to listen. Port 0 picks a free port.
    min_patients : int
        The floor of small-cell suppression (k) for research outputs: the researcher page and
        its downloads use ``max(requested, min_patients)``.
    snapshot_dir : str or None
        Directory of the research data's Parquet snapshots (and the perturbation key);
        None means ``$TPMAP_SNAPSHOT_DIR``, else the user cache directory.
    allowed_origins : tuple of str
        Extra websocket origins (``host`` or ``host:port``, as the browser's address bar
        shows them), e.g. the public name behind a proxy. Never ``*``.
    secret_file : str or None
        A file holding the server secret; else ``$TPMAP_SECRET``; else one generated in
        ``data_dir`` (refused on a non-loopback address).
    data_dir : str or None
        Where a generated secret is kept (default: tpmap's user data directory).
    idle_timeout : datetime.timedelta
        A sign-in unused this long ends (default 8 hours).
    behind_proxy : bool
        Behind a TLS-terminating proxy: trust its X-Forwarded-* headers and mark cookies
        ``Secure``.
    """

    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 5006
    min_patients: int = 5
    snapshot_dir: str | None = None
    allowed_origins: tuple[str, ...] = field(default_factory=tuple)
    secret_file: str | None = None
    data_dir: str | None = None
    idle_timeout: dt.timedelta = DEFAULT_IDLE
    behind_proxy: bool = False


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (``127.0.0.1``, ``::1``, localhost).

    >>> is_loopback("127.0.0.1"), is_loopback("0.0.0.0"), is_loopback("localhost")
    (True, False, True)
    """
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _pages() -> dict[str, Callable[..., object]]:
    # Imported here so that importing tpmap.server does not pull in every page.
    from tpmap.apps import annotate, diagram, explore

    return {
        "/annotate": annotate.make_document,
        "/explore": explore.make_document,
        "/atlas": diagram.make_document,
    }


class _PageApplication(Application):
    """A Bokeh application whose session tokens name the sign-in they were made for."""

    def process_request(self, request: Any) -> dict[str, Any]:
        data = super().process_request(request)
        principal = getattr(request, "_tpmap_principal", None)
        # In the signed token (sign_sessions): the page and the websocket check it.
        data["tpmap_login"] = principal.login_id if isinstance(principal, Principal) else None
        return data


def _page(
    make: Callable[..., object], context: dict[str, Any], auth: TpmapAuth
) -> Callable[[Any], None]:
    # Bokeh wants a handler of exactly one argument, the document.
    def handler(doc: Any) -> None:
        session = doc.session_context
        login = session.token_payload.get("tpmap_login") if session is not None else None
        principal = None
        if isinstance(login, int):
            principal = auth.store.check_login(
                login_id=login, idle=auth.idle_timeout, touch_after=auth.touch_after
            )
        if principal is None:
            # Cannot happen through the HTTP page (it needs a sign-in first); a forged or
            # stale session gets an empty document, and its websocket is refused anyway.
            log.warning("no open sign-in for a new page session: leaving it empty")
            return
        make(doc, **context, user=principal)

    return handler


def _origins(settings: Settings, port: int) -> list[str]:
    hosts = {"localhost", "127.0.0.1"}
    if settings.host not in ("", "0.0.0.0", "::"):
        hosts.add(settings.host)
    return sorted({f"{h}:{port}" for h in hosts} | set(settings.allowed_origins))


def _check_origins(settings: Settings) -> None:
    for origin in settings.allowed_origins:
        if "*" in origin or "/" in origin or not origin.strip():
            raise ServerConfigError(
                f"--allow-origin {origin!r}: give a host or host:port as the browser shows it "
                "(e.g. tpmap.example.org or clinic-pc:5006), never a wildcard"
            )
    env = os.environ.get("BOKEH_ALLOW_WS_ORIGIN", "")
    if "*" in env:
        raise ServerConfigError(
            "BOKEH_ALLOW_WS_ORIGIN allows any website to open tpmap's websocket: unset it and "
            "use --allow-origin"
        )


def resolve_secret(settings: Settings) -> Secret:
    """The server secret for ``settings``; refuses a generated one on a public address."""
    try:
        secret = load_secret(secret_file=settings.secret_file, data_dir=settings.data_dir)
    except ValueError as exc:
        raise ServerConfigError(str(exc)) from None
    if not is_loopback(settings.host) and not secret.explicit:
        raise ServerConfigError(
            f"tpmap serve on {settings.host} (reachable from other machines) needs a secret "
            "set explicitly: put a long random string in TPMAP_SECRET or in a file given with "
            "--secret-file (chmod 600), the same for every tpmap process on this database. "
            "See docs/deploy.md."
        )
    return secret


def build_server(
    settings: Settings, *, store: Any = None, secret: Secret | None = None, **server_kwargs: Any
) -> Server:
    """Create (but do not start) the Bokeh server for ``settings``.

    Parameters
    ----------
    settings : Settings
    store : tpmap.store.Store, optional
        An open store; by default one is opened on ``settings.database_url``.
    secret : tpmap.auth.Secret, optional
        By default from :func:`resolve_secret`.
    **server_kwargs
        Passed to `bokeh.server.server.Server` (e.g. ``io_loop``).

    Raises
    ------
    ServerConfigError
        When the settings are unsafe (no explicit secret on a public address, a wildcard
        websocket origin).
    """
    _check_origins(settings)
    secret = secret or resolve_secret(settings)
    install_websocket_checks()
    atlas = load_atlas()
    threading.Thread(target=atlas.warm, name="tpmap-atlas-warm", daemon=True).start()
    if store is None:
        store = open_store(settings.database_url, secret=secret)
    auth = TpmapAuth(
        store, idle_timeout=settings.idle_timeout, secure_cookies=settings.behind_proxy
    )
    # One research data set per server, loaded when a researcher page first needs it and
    # shared by every tab. It lives in a low-priority child process (tpmap.research.
    # ResearchProcess), so research work takes neither the GIL nor a clinician's core.
    research = _research_worker(store, settings, atlas)
    context = {"atlas": atlas, "store": store, "settings": settings, "research": research}
    apps = {
        path: _PageApplication(FunctionHandler(_page(make, context, auth)))
        for path, make in _pages().items()
    }
    server = Server(
        apps,
        address=settings.host,
        port=settings.port,
        allow_websocket_origin=_origins(settings, settings.port) if settings.port else None,
        use_xheaders=settings.behind_proxy,
        extra_patterns=[(r"/", RootHandler)],
        auth_provider=auth,
        # Signed session ids and tokens: a session id cannot be guessed or made up.
        sign_sessions=True,
        secret_key=secret.key("bokeh-sessions"),
        generate_session_ids=True,
        cookie_secret=secret.key("cookies"),
        xsrf_cookies=True,
        xsrf_cookie_kwargs={"httponly": True, "samesite": "Lax", "secure": settings.behind_proxy},
        # Bokeh copies request headers and cookies into the session token, which the page's
        # HTML carries: keep the session cookie (HttpOnly) out of reach of any script.
        include_cookies=[],
        exclude_headers=["Cookie", "Authorization"],
        **server_kwargs,
    )
    if not settings.port:
        # Port 0: the allow-list can only name the port once it is bound.
        assert server.port is not None  # Server() has bound its socket
        server._tornado.websocket_origins.update(_origins(settings, server.port))
    log.info("websocket origins allowed: %s", sorted(server._tornado.websocket_origins))
    return server


def _research_worker(store: Store, settings: Settings, atlas: Atlas) -> Any:
    """The server's research data set: in a child process, unless the database is one only
    this process can open (an in-memory SQLite database)."""
    from tpmap.research import ResearchProcess, SharedDataset, view_grids

    url = store.engine.url
    grids = view_grids(atlas)
    if url.get_backend_name() == "sqlite" and (url.database or ":memory:") == ":memory:":
        return SharedDataset(store, snapshot=settings.snapshot_dir, grids=grids)
    return ResearchProcess(
        url.render_as_string(hide_password=False), snapshot=settings.snapshot_dir, grids=grids
    )


def run(
    settings: Settings,
    *,
    store: Any = None,
    secret: Secret | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Start the server and block until interrupted."""
    # The event loop shares the GIL with the research and store workers: a thread asking
    # for it waits up to the switch interval (5 ms by default) at every hand-over, and a
    # tap hands over several times. 1 ms keeps taps quick while a researcher computes.
    sys.setswitchinterval(0.001)
    server = build_server(settings, store=store, secret=secret)
    server.start()
    url = f"http://{settings.host}:{server.port}/"
    (on_ready or print)(f"tpmap is serving at {url}  (Ctrl+C to stop)")
    try:
        server.io_loop.start()
    except KeyboardInterrupt:  # pragma: no cover - interactive
        pass
    finally:
        server.stop()
