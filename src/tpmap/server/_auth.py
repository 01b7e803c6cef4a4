"""Signing in to the Bokeh server: the auth provider, the sign-in and sign-out pages.

- The browser holds one **signed** cookie (Tornado's ``set_signed_cookie`` with a key derived
  from the server secret) carrying a random token; the database keeps only the token's hash
  in ``login_sessions``. Each HTTP request and each websocket message is checked against
  that row: signed out, idle too long or account disabled means no page and no websocket.
- Bokeh session ids and tokens are signed too (``sign_sessions``), and the token carries the
  id of the sign-in it was made for, so that a websocket opened with someone else's cookie
  is refused.
- The sign-in form is protected by Tornado's XSRF check; everything typed is echoed back
  escaped, and errors never carry exception text.
"""

from __future__ import annotations

import datetime as dt
import functools
import html
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlencode

from bokeh.server.auth_provider import AuthProvider
from tornado.ioloop import IOLoop
from tornado.web import HTTPError, RequestHandler
from tornado.websocket import WebSocketHandler

from tpmap.auth import Principal
from tpmap.store import SignInError

if TYPE_CHECKING:
    from bokeh.server.tornado import BokehTornado

    from tpmap.store import Store

__all__ = [
    "COOKIE",
    "LoginHandler",
    "LogoutHandler",
    "RootHandler",
    "TpmapAuth",
    "home_of",
    "install_websocket_checks",
]

log = logging.getLogger("tpmap.server.auth")

COOKIE = "tpmap_session"
#: A signed cookie older than this is not read at all, whatever the database says.
COOKIE_MAX_AGE_DAYS = 14
LOGIN_URL = "/login"
LOGOUT_URL = "/logout"
# Close codes of the websocket (4000-4999: the application's own).
WS_SIGNED_OUT = 4401
WS_WRONG_SESSION = 4403


def home_of(principal: Principal) -> str:
    """Where a principal lands after signing in: their main page."""
    if principal.is_clinician:
        return "/annotate"
    if principal.is_researcher:
        return "/explore"
    return "/"


def _safe_next(value: str | None) -> str | None:
    """``value`` when it is a path on this server (no open redirect), else None."""
    if not value or len(value) > 500:
        return None
    if not value.startswith("/") or value.startswith(("//", "/\\")):
        return None
    if any(c in value for c in "\\\r\n\t") or not value.isprintable():
        return None
    return value


def _auth_provider(handler: RequestHandler) -> AuthProvider:
    """The server's auth provider, which Bokeh's BokehTornado application carries (Tornado
    types a handler's application as a plain Application)."""
    return cast("BokehTornado", handler.application).auth_provider


class TpmapAuth(AuthProvider):
    """Bokeh auth provider: the principal from the signed cookie, checked in the database.

    Parameters
    ----------
    store : tpmap.store.Store
    idle_timeout : datetime.timedelta
        A sign-in unused this long has ended.
    secure_cookies : bool
        Mark cookies ``Secure`` (behind a TLS-terminating proxy).
    """

    def __init__(
        self, store: Store, *, idle_timeout: dt.timedelta, secure_cookies: bool = False
    ) -> None:
        self.store = store
        self.idle_timeout = idle_timeout
        self.secure_cookies = secure_cookies
        # Touch a sign-in's last_seen_at at most this often (a write per websocket message
        # would cost more than the tap it carries), and well within the idle time.
        self.touch_after = min(dt.timedelta(minutes=1), idle_timeout / 4)
        super().__init__()

    # -- the AuthProvider interface --------------------------------------------------------

    # Bokeh types the user as its NewType ``User``; this provider's user is a Principal.
    @property
    def get_user_async(  # type: ignore[override]
        self,
    ) -> Callable[[Any], Awaitable[Principal | None]]:
        return self._user_of

    @property
    def login_url(self) -> str:
        return LOGIN_URL

    @property
    def login_handler(self) -> type[RequestHandler]:
        return LoginHandler

    @property
    def logout_url(self) -> str:
        return LOGOUT_URL

    @property
    def logout_handler(self) -> type[RequestHandler]:
        return LogoutHandler

    # -- resolving the principal -----------------------------------------------------------

    def cookie_token(self, handler: RequestHandler) -> str | None:
        """The token in the request's signed cookie (None when absent, forged or too old)."""
        raw = handler.get_signed_cookie(COOKIE, max_age_days=COOKIE_MAX_AGE_DAYS)
        if raw is None:
            return None
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            return None

    async def _in_thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        # The database is never queried on the event loop.
        return await IOLoop.current().run_in_executor(None, functools.partial(fn, *args, **kwargs))

    async def principal_of(self, handler: RequestHandler) -> Principal | None:
        """The principal of the request's cookie, or None."""
        token = self.cookie_token(handler)
        if token is None:
            return None
        try:
            return await self._in_thread(
                self.store.check_login,
                token=token,
                idle=self.idle_timeout,
                touch_after=self.touch_after,
            )
        except Exception:
            log.exception("checking a sign-in failed")
            return None

    async def _user_of(self, handler: RequestHandler) -> Principal | None:
        principal = await self.principal_of(handler)
        websocket = isinstance(handler, WebSocketHandler)
        if principal is None:
            if websocket:
                # Refused before the upgrade: no websocket without a sign-in.
                raise HTTPError(401)
            return None  # a page: Tornado's @authenticated redirects to the sign-in page
        context = getattr(handler, "application_context", None)
        page = getattr(context, "url", None)
        if page is not None and not principal.may_open(page):
            log.warning("%s may not open %s", principal.name, page)
            raise HTTPError(403)
        # Read by PageApplication.process_request: the Bokeh token names this sign-in.
        # A private attribute on Tornado's request, which declares none of ours.
        handler.request._tpmap_principal = principal  # type: ignore[attr-defined]
        return principal

    async def recheck(self, login_id: int | None) -> bool:
        """Whether sign-in ``login_id`` is still open (before each websocket message)."""
        if login_id is None:
            return False
        try:
            return bool(
                await self._in_thread(
                    self.store.login_is_open,
                    login_id,
                    idle=self.idle_timeout,
                    touch_after=self.touch_after,
                )
            )
        except Exception:
            log.exception("re-checking a sign-in failed")
            return False

    def set_cookie(self, handler: RequestHandler, token: str) -> None:
        """Give the browser its signed, HttpOnly, SameSite=Lax session cookie."""
        handler.set_signed_cookie(
            COOKIE,
            token,
            expires_days=None,  # a browser-session cookie; the server ends it when idle
            httponly=True,
            samesite="Lax",
            secure=self.secure_cookies,
            path="/",
        )

    def clear_cookie(self, handler: RequestHandler) -> None:
        """Remove the session cookie from the browser."""
        handler.clear_cookie(
            COOKIE, path="/", httponly=True, samesite="Lax", secure=self.secure_cookies
        )


def install_websocket_checks() -> None:
    """Check the sign-in when Bokeh's websocket opens and before each message it handles.

    Patched into Bokeh's ``WSHandler`` once; it acts only on servers whose auth provider is a
    :class:`TpmapAuth`. Also turns on TCP_NODELAY (see ``tpmap.server._app``).
    """
    from bokeh.server.views.ws import WSHandler
    from bokeh.util.token import get_token_payload

    if getattr(WSHandler.open, "_tpmap", False):
        return
    original_open = WSHandler.open
    original_handle = WSHandler._handle

    def open(self: WSHandler) -> None:
        # Bokeh writes each message as several frames: without TCP_NODELAY, Nagle's algorithm
        # and delayed ACKs would hold every update about 40 ms.
        self.set_nodelay(True)
        auth = _auth_provider(self)
        if isinstance(auth, TpmapAuth):
            principal = self.current_user
            try:
                login = get_token_payload(self._token or "").get("tpmap_login")
            except Exception:
                login = None
            if not isinstance(principal, Principal) or login != principal.login_id:
                log.warning("websocket refused: its token belongs to another sign-in")
                self.close(WS_WRONG_SESSION, "sign in again")
                return
        original_open(self)

    async def _handle(self: WSHandler, message: Any) -> Any:
        auth = _auth_provider(self)
        if isinstance(auth, TpmapAuth):
            principal = self.current_user
            login = principal.login_id if isinstance(principal, Principal) else None
            if not await auth.recheck(login):
                log.info("closing the websocket of an ended sign-in (%s)", login)
                self.close(WS_SIGNED_OUT, "signed out")
                return None
        return await original_handle(self, message)

    # Bokeh's websocket handler patched in place (it offers no hook): the marker stops a
    # second patch, and the checker rightly flags both as unusual.
    open._tpmap = True  # type: ignore[attr-defined]
    WSHandler.open = open  # type: ignore[method-assign]
    WSHandler._handle = _handle  # type: ignore[method-assign]


# -- pages ----------------------------------------------------------------------------------

_STYLE = """
body{font:16px/1.4 system-ui,sans-serif;margin:0;background:#f4f6f8;color:#1d2329}
main{max-width:22rem;margin:12vh auto;background:#fff;padding:2rem;border-radius:8px;
box-shadow:0 1px 4px #0002}
h1{font-size:1.4rem;margin:0 0 1rem}
label{display:block;margin:.8rem 0 .2rem}
input[type=text],input[type=password]{width:100%;box-sizing:border-box;font-size:1rem;
padding:.55rem;border:1px solid #9aa5b1;border-radius:4px}
button{margin-top:1.2rem;width:100%;padding:.7rem;font-size:1rem;border:0;border-radius:4px;
background:#1f5f8b;color:#fff}
.msg{padding:.6rem;border-radius:4px;margin-bottom:.8rem}
.error{background:#fde8ea;color:#8a0015}
.info{background:#e8f2fd;color:#0b3d66}
p.small{font-size:.85rem;color:#4b5563}
"""


class _Page(RequestHandler):
    """A small HTML page of its own: strict headers, no script at all."""

    def set_default_headers(self) -> None:
        self.set_header(
            "Content-Security-Policy",
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'",
        )
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        self.set_header("Cache-Control", "no-store")

    @property
    def auth(self) -> TpmapAuth:
        # The server installs TpmapAuth before it routes any of these pages.
        return cast(TpmapAuth, _auth_provider(self))

    def page(self, title: str, body: str, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(title)} · tpmap</title><style>{_STYLE}</style></head>"
            f"<body><main>{body}</main></body></html>"
        )

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        # Never a traceback or exception text on the page (details are in the log).
        self.page("Error", "<h1>Something went wrong</h1><p>Please try again.</p>", status_code)


class LoginHandler(_Page):
    """``/login``: the sign-in form (GET) and signing in (POST, XSRF-checked)."""

    def form(
        self, *, name: str = "", message: str = "", kind: str = "error", status: int = 200
    ) -> None:
        nxt = _safe_next(self.get_argument("next", None)) or ""
        note = (
            f"<div class='msg {kind}' role='alert' id='message'>{html.escape(message)}</div>"
            if message
            else ""
        )
        action = LOGIN_URL + ("?" + urlencode({"next": nxt}) if nxt else "")
        body = (
            "<h1>Sign in to tpmap</h1>"
            f"{note}"
            f"<form method='post' action='{html.escape(action, quote=True)}'>"
            f"{self.xsrf_form_html()}"
            "<label for='name'>Name</label>"
            f"<input type='text' id='name' name='name' value='{html.escape(name, quote=True)}' "
            "autocomplete='username' autocapitalize='none' spellcheck='false' required>"
            "<label for='password'>Password</label>"
            "<input type='password' id='password' name='password' "
            "autocomplete='current-password' required>"
            "<button type='submit'>Sign in</button></form>"
            "<p class='small'>Accounts are made by your tpmap administrator.</p>"
        )
        self.page("Sign in", body, status)

    async def get(self) -> None:
        principal = await self.auth.principal_of(self)
        if principal is not None:
            self.redirect(_safe_next(self.get_argument("next", None)) or home_of(principal))
            return
        if self.get_argument("signed_out", None):
            self.form(message="You are signed out.", kind="info")
        else:
            self.form()

    async def post(self) -> None:
        name = self.get_body_argument("name", "")[:200]
        password = self.get_body_argument("password", "")[:2048]
        address = self.request.remote_ip
        try:
            result = await self.auth._in_thread(
                self.auth.store.sign_in, name, password, address=address
            )
        except SignInError as exc:
            self.form(name=name, message=str(exc), status=429 if exc.throttled else 401)
            return
        except Exception:
            log.exception("signing in failed")
            self.form(name=name, message="Signing in failed: please try again.", status=500)
            return
        self.auth.set_cookie(self, result.token)
        self.redirect(_safe_next(self.get_argument("next", None)) or home_of(result.principal))


class LogoutHandler(_Page):
    """``/logout``: a confirmation (GET) and signing out (POST, XSRF-checked)."""

    async def get(self) -> None:
        principal = await self.auth.principal_of(self)
        if principal is None:
            self.redirect(LOGIN_URL)
            return
        self.page(
            "Sign out",
            f"<h1>Sign out</h1><p>Signed in as <b>{html.escape(principal.name)}</b>.</p>"
            f"<form method='post' action='{LOGOUT_URL}'>{self.xsrf_form_html()}"
            "<button type='submit'>Sign out</button></form>",
        )

    async def post(self) -> None:
        token = self.auth.cookie_token(self)
        if token is not None:
            try:
                await self.auth._in_thread(
                    self.auth.store.sign_out, token, address=self.request.remote_ip
                )
            except Exception:
                log.exception("signing out failed")
        self.auth.clear_cookie(self)
        self.redirect(LOGIN_URL + "?signed_out=1")


class RootHandler(_Page):
    """``/``: the signed-in user's main page, or the sign-in page."""

    async def get(self) -> None:
        principal = await self.auth.principal_of(self)
        if principal is None:
            self.redirect(LOGIN_URL)
            return
        home = home_of(principal)
        if home != "/":
            self.redirect(home)
            return
        self.page(
            "tpmap",
            f"<h1>tpmap</h1><p>Signed in as <b>{html.escape(principal.name)}</b> "
            "(administrator). Accounts and clinics are managed on the server's command line: "
            "<code>tpmap user add</code>, <code>tpmap user list</code>, "
            "<code>tpmap clinic add</code>, <code>tpmap audit</code>.</p>"
            f"<p><a href='{LOGOUT_URL}'>Sign out</a></p>",
        )
