"""Signing in, against a real `tpmap serve`: pages AND websockets are closed to everyone else.

The websocket is opened for real (Tornado's websocket client speaking Bokeh's protocol), not
only the HTTP page: a page refused while its websocket still answers would be no protection.
Every test runs on SQLite and, with TPMAP_TEST_POSTGRES_URL, on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import http.client
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from urllib.parse import urlencode, urlsplit

import pytest
from sqlalchemy import update
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.web import create_signed_value
from tornado.websocket import websocket_connect

from tpmap.auth import derive_key
from tpmap.store import Store
from tpmap.store.schema import LoginSessionRow, utcnow

from conftest import TEST_PASSWORD, TEST_SECRET, sign_in

COOKIE = "tpmap_session"
RIGHT_KEY = derive_key(TEST_SECRET.encode(), "cookies")
OTHER_KEY = derive_key(b"some-other-secret-of-an-attacker-0123456789", "cookies")


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: str

    @property
    def location(self) -> str:
        return self.headers.get("Location", "")


@dataclass
class Client:
    """A tiny HTTP client with a cookie jar, which never follows redirects."""

    base: str
    cookies: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, form: dict[str, str] | None = None) -> Response:
        parts = urlsplit(self.base)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        headers = {}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers=headers)
        raw = conn.getresponse()
        text = raw.read().decode("utf-8", "replace")
        for header in raw.headers.get_all("Set-Cookie") or []:
            jar: SimpleCookie = SimpleCookie()
            jar.load(header)
            for name, morsel in jar.items():
                if morsel.value and morsel["expires"] != "" and "1970" in morsel["expires"]:
                    self.cookies.pop(name, None)
                elif morsel.value:
                    self.cookies[name] = morsel.value
                else:
                    self.cookies.pop(name, None)
        conn.close()
        return Response(raw.status, raw.headers, text)

    def get(self, path: str) -> Response:
        return self.request("GET", path)

    def xsrf(self, path: str = "/login") -> str:
        page = self.get(path)
        match = re.search(r'name="_xsrf" value="([^"]+)"', page.body)
        assert match, page.body[:500]
        return match.group(1)

    def sign_in(self, name: str, password: str = TEST_PASSWORD) -> Response:
        token = self.xsrf()
        return self.request("POST", "/login", {"_xsrf": token, "name": name, "password": password})


def bokeh_token(page: Response) -> str:
    match = re.search(r'"token":"([^"]+)"', page.body)
    assert match, "the page carries no Bokeh session token"
    return match.group(1)


async def _websocket(
    base: str, app: str, token: str | None, cookie: str | None, messages: int, origin: str
) -> tuple[str, object]:
    headers = {"Origin": origin}
    if cookie:
        headers["Cookie"] = cookie
    url = base.replace("http://", "ws://") + f"/{app}/ws"
    request = HTTPRequest(url, headers=headers, request_timeout=20)
    try:
        conn = await websocket_connect(
            request, subprotocols=["bokeh", token] if token else ["bokeh"]
        )
    except HTTPClientError as exc:
        return "refused", exc.code
    try:
        received = []
        # The server speaks first (ACK); then each PULL-DOC-REQ must get its reply.
        msgtype = await _read_message(conn)
        if msgtype is None:
            return "closed", conn.close_code
        received.append(msgtype)
        for i in range(messages):
            hook = _BETWEEN.pop(0) if _BETWEEN else None
            if hook is not None:
                await asyncio.get_running_loop().run_in_executor(None, hook)
            msg = json.dumps({"msgid": f"t{i}", "msgtype": "PULL-DOC-REQ"})
            for frame in (msg, "{}", "{}"):
                await conn.write_message(frame)
            msgtype = await _read_message(conn)
            if msgtype is None:
                return "closed", (received, conn.close_code)
            received.append(msgtype)
        return "open", received
    finally:
        conn.close()


async def _read_message(conn: object) -> str | None:
    """Read one whole Bokeh message (header, metadata, content, buffers); its msgtype."""
    header = await asyncio.wait_for(conn.read_message(), 20)  # type: ignore[attr-defined]
    if header is None:
        return None
    parsed = json.loads(header)
    for _ in range(2 + 2 * parsed.get("num_buffers", 0)):
        if await asyncio.wait_for(conn.read_message(), 20) is None:  # type: ignore[attr-defined]
            return None
    return str(parsed["msgtype"])


# Work to run between messages of the next websocket (e.g. disable the account meanwhile).
_BETWEEN: list[object] = []


def websocket(
    client: Client,
    token: str | None,
    *,
    app: str = "annotate",
    cookie: str | None = "jar",
    messages: int = 0,
    origin: str | None = None,
) -> tuple[str, object]:
    """Open Bokeh's websocket like a browser would: ("open", msgtypes) or ("refused", code)."""
    if cookie == "jar":
        cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
    coro = _websocket(client.base, app, token, cookie, messages, origin or client.base)
    # A thread of its own: Playwright's sync API may hold an event loop in this one.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def signed(key: bytes, value: str) -> str:
    return create_signed_value(key, COOKIE, value).decode()


def test_no_page_and_no_websocket_without_a_valid_signed_cookie(serve, store_url):
    server = serve(store_url)
    anonymous = Client(server.url)

    # No cookie: the page sends you to the sign-in page; the websocket is refused outright.
    page = anonymous.get("/annotate")
    assert page.status == 302 and page.location.startswith("/login?next=%2Fannotate")
    assert "bokeh" not in page.body.lower()
    assert websocket(anonymous, None) == ("refused", 401)

    # Signed in: the page and its websocket work (this is what the refusals are measured by).
    clinician = Client(server.url)
    assert clinician.sign_in("clinician").location == "/annotate"
    raw_token = _login_token(clinician)
    page = clinician.get("/annotate")
    assert page.status == 200
    token = bokeh_token(page)
    assert websocket(clinician, token, messages=1) == ("open", ["ACK", "PULL-DOC-REPLY"])
    # The session cookie never reaches the page (Bokeh copies cookies into its token).
    assert raw_token not in page.body and raw_token not in json.dumps(token)

    # The same token without the cookie, or with a cookie that is not validly signed.
    assert websocket(clinician, token, cookie=None) == ("refused", 401)
    for cookie in (
        f"{COOKIE}={raw_token}",  # the right token, unsigned
        f"{COOKIE}={signed(OTHER_KEY, raw_token)}",  # signed with another secret
        f"{COOKIE}={signed(RIGHT_KEY, 'made-up-token')}",  # well signed, no such sign-in
    ):
        forged = Client(server.url, {COOKIE: cookie.split("=", 1)[1]})
        page = forged.get("/annotate")
        assert page.status == 302 and "/login" in page.location, cookie
        assert websocket(forged, token) == ("refused", 401), cookie
    # Control: a cookie this test signs with the server's own key is accepted, so the
    # refusals above are about the signature, not about how the test builds cookies.
    genuine = Client(server.url, {COOKIE: signed(RIGHT_KEY, raw_token)})
    assert genuine.get("/annotate").status == 200

    # A websocket from a page of another website is refused.
    assert websocket(clinician, token, origin="http://evil.example")[0] == "refused"

    # An expired sign-in (idle longer than 8 hours): no page, no websocket.
    with Store(server.db_url) as store, store.engine.begin() as conn:
        conn.execute(update(LoginSessionRow).values(last_seen_at=utcnow() - dt.timedelta(hours=9)))
    page = clinician.get("/annotate")
    assert page.status == 302 and "/login" in page.location
    assert websocket(clinician, token) == ("refused", 401)


def _login_token(client: Client) -> str:
    """The random token inside the client's signed session cookie."""
    from tornado.web import decode_signed_value

    value = decode_signed_value(RIGHT_KEY, COOKIE, client.cookies[COOKIE])
    assert value is not None
    return value.decode()


def test_sign_out_ends_the_session_on_the_server(serve, store_url):
    server = serve(store_url)
    client = Client(server.url)
    client.sign_in("clinician")
    token = bokeh_token(client.get("/annotate"))
    kept = dict(client.cookies)  # someone who copied the cookie before the sign-out
    page = client.get("/logout")
    assert page.status == 200 and "Sign out" in page.body
    out = client.request("POST", "/logout", {"_xsrf": client.xsrf("/logout")})
    assert out.status == 302 and out.location == "/login?signed_out=1"
    assert COOKIE not in client.cookies
    copied = Client(server.url, kept)
    assert copied.get("/annotate").status == 302
    assert websocket(copied, token) == ("refused", 401)
    # Signing out needs the form's XSRF token: another site cannot sign you out by a post.
    again = Client(server.url)
    again.sign_in("clinician")
    assert again.request("POST", "/logout", {}).status == 403
    assert again.get("/annotate").status == 200


def test_a_researcher_is_refused_the_clinician_page(serve, store_url):
    server = serve(store_url)
    researcher = Client(server.url)
    assert researcher.sign_in("researcher").location == "/explore"
    assert researcher.get("/annotate").status == 403
    explore = researcher.get("/explore")
    assert explore.status == 200
    token = bokeh_token(explore)
    assert websocket(researcher, token, app="explore")[0] == "open"
    # A token of the researcher page does not open the clinician page's websocket either.
    assert websocket(researcher, token, app="annotate") == ("refused", 403)


def test_a_disabled_account_is_out_at_its_next_message(serve, store_url):
    server = serve(store_url)
    client = Client(server.url)
    client.sign_in("clinician")
    token = bokeh_token(client.get("/annotate"))

    def disable() -> None:
        with Store(server.db_url) as store:
            store.set_user_active("clinician", False, user="admin-test")

    _BETWEEN.extend([None, disable])
    outcome, detail = websocket(client, token, messages=2)
    # The first request was answered; after the account was disabled, the next message
    # closed the connection instead of being answered.
    assert outcome == "closed"
    received, code = detail  # type: ignore[misc]
    assert received == ["ACK", "PULL-DOC-REPLY"] and code == 4401
    assert client.get("/annotate").status == 302
    again = Client(server.url)
    assert "Wrong name or password." in again.sign_in("clinician").body


def test_repeated_wrong_passwords_are_slowed_and_logged(serve, store_url):
    server = serve(store_url)
    client = Client(server.url)
    for _ in range(10):
        page = client.sign_in("clinician", "not the password")
        assert page.status == 401 and "Wrong name or password." in page.body
    unknown = client.sign_in("nobody-of-that-name", "not the password")
    # The 11th try in a minute is refused without looking at the password, right or wrong.
    page = client.sign_in("clinician", TEST_PASSWORD)
    assert page.status == 429 and "Too many failed sign-ins" in page.body
    assert COOKIE not in client.cookies
    assert unknown.status == 429
    log = server.log.read_text()
    assert "failed sign-in for 'clinician' from 127.0.0.1" in log
    assert "sign-in refused for 'clinician'" in log
    with Store(server.db_url) as store:
        failed = store.audit_entries(action="sign_in_failed")
    assert len(failed) == 10 and {e.address for e in failed} == {"127.0.0.1"}


def test_the_sign_in_form_refuses_a_post_without_its_xsrf_token(serve):
    server = serve()
    client = Client(server.url)
    page = client.request("POST", "/login", {"name": "clinician", "password": TEST_PASSWORD})
    assert page.status == 403 and COOKIE not in client.cookies
    assert "Traceback" not in page.body


def test_a_public_address_needs_an_explicit_secret(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TPMAP_SECRET"}
    env["XDG_DATA_HOME"] = str(tmp_path / "data")  # where a generated secret would go
    cmd = [sys.executable, "-m", "tpmap", "serve", "--db", f"sqlite:///{tmp_path / 'x.db'}"]
    done = subprocess.run(
        [*cmd, "--host", "0.0.0.0", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "needs a secret set explicitly" in done.stderr and "TPMAP_SECRET" in done.stderr
    wildcard = subprocess.run(
        [*cmd, "--port", "0", "--allow-origin", "*"],
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert wildcard.returncode == 2 and "never a wildcard" in wildcard.stderr


HOSTILE = "<img src=x onerror=\"window.__pwned=1;document.title='pwned'\">"


def test_the_sign_in_page_shows_hostile_text_as_text_in_chromium(serve, page):
    server = serve()
    page.goto(f"{server.url}/login?next=javascript:alert(1)")
    page.locator("#name").fill(HOSTILE)
    page.locator("#password").fill("wrong password")
    with page.expect_navigation():
        page.locator("button[type=submit]").click()
    assert page.locator("#message").inner_text() == "Wrong name or password."
    # The name comes back as the field's text, exactly as typed; no element was made of it.
    assert page.locator("#name").input_value() == HOSTILE
    assert page.locator("img").count() == 0
    assert page.evaluate("() => window.__pwned") is None
    assert page.title() != "pwned"
    # A "next" that is not a path on this server is not followed after signing in.
    sign_in(page, server, "clinician", next_path="//evil.example/")
    assert urlsplit(page.url).netloc == urlsplit(server.url).netloc
    assert urlsplit(page.url).path == "/annotate"


def test_an_administrator_without_the_clinician_role_sees_no_patients(serve, store_url):
    server = serve(store_url)
    with Store(server.db_url) as store:
        store.add_user("admin", TEST_PASSWORD, roles=["admin"], user="tests")
    client = Client(server.url)
    assert client.sign_in("admin").location == "/"
    home = client.get("/")
    assert home.status == 200 and "tpmap user add" in home.body
    assert client.get("/annotate").status == 403
    assert client.get("/explore").status == 403


@pytest.fixture(autouse=True)
def _no_leftover_hooks():
    yield
    _BETWEEN.clear()
