"""The login and consent pages in a real browser: Playwright drives Debian's
Chromium (headless) through a SMART standalone launch against a real
``radhub serve`` process, to a redirect URI served by a real local listener;
the test then exchanges the code and reads the Patient with the token.

Playwright's own browser builds cannot be downloaded here, so the system
``chromium`` is launched by path (skipped without it, failed under
``RADHUB_REQUIRE_PEERS=1``).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from html import escape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from tests.smart_pages import pkce_pair

from .conftest import ServerProcess, cli
from .spa_site import running

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Response

pytestmark = [pytest.mark.peer, pytest.mark.slow]

PASSWORD = "pw-for-pat-0123"
SCOPE = "launch/patient openid fhirUser patient/*.rs offline_access"
UNTICKED = "offline_access"


@dataclass
class Listener:
    """The client app's side: a real HTTP server on loopback that records every
    request it gets (the redirect URI), and serves a page framing ``?src=``."""

    server: ThreadingHTTPServer
    hits: list[str] = field(default_factory=list)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def redirect_uri(self) -> str:
        return f"{self.origin}/callback"

    def callbacks(self) -> list[str]:
        return [hit for hit in self.hits if hit.startswith("/callback")]


def _handler(listener: Listener) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            listener.hits.append(self.path)
            url = urlsplit(self.path)
            if url.path == "/frame":
                src = escape(parse_qs(url.query)["src"][0])
                # the load event fires for a blocked frame too (with an error page)
                body = (
                    f"<title>framing</title><iframe id=f src='{src}' "
                    "onload=\"document.title='loaded'\"></iframe>"
                )
            else:
                body = "<title>callback</title><p id=done>back at the app</p>"
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # keep the test output clean

    return Handler


@contextmanager
def listening() -> Iterator[Listener]:
    listener = Listener(ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler))
    listener.server.RequestHandlerClass = _handler(listener)
    with running(listener.server):
        yield listener


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    context.set_default_timeout(30_000)  # generous: CI machines are shared
    try:
        yield context.new_page()
    finally:
        context.close()


@dataclass(frozen=True)
class Site:
    """A running radhub with a public client, a patient user and two patients."""

    server: ServerProcess
    listener: Listener
    http: httpx.Client  # the app's back end: token exchange and FHIR reads

    @property
    def fhir(self) -> str:
        return f"{self.server.base}/fhir"

    def authorize_url(self, state: str, challenge: str) -> str:
        query = {
            "response_type": "code",
            "client_id": "app",
            "redirect_uri": self.listener.redirect_uri,
            "scope": SCOPE,
            "state": state,
            "aud": self.fhir,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        return f"{self.server.base}/auth/authorize?{urlencode(query)}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One server for the module: starting it and running the admin commands is most
    of the time these tests take."""
    data = tmp_path_factory.mktemp("browser") / "data"
    server = ServerProcess(data)
    with listening() as listener, httpx.Client(base_url=server.base, timeout=30) as http:
        try:
            server.start()
            seed(data, http, listener)
            yield Site(server, listener, http)
        finally:
            server.kill()


def seed(data: Path, http: httpx.Client, listener: Listener) -> None:
    """A public client, a patient user whose record is p1, and patients p1 and p2."""
    d = ["--data-dir", str(data)]
    cli(
        "client", "add", *d, "--client-id", "app", "--public",
        "--redirect-uri", listener.redirect_uri,
    )  # fmt: skip
    cli(
        "user", "add", *d, "--username", "pat", "--password", PASSWORD,
        "--role", "patient", "--fhir-user", "Patient/p1",
    )  # fmt: skip
    admin = {"Authorization": f"Bearer {cli('token', *d, '--scope', 'system/*.cruds')}"}
    for pid, family in (("p1", "Doe"), ("p2", "Other")):
        patient = {"resourceType": "Patient", "id": pid, "name": [{"family": family}]}
        put = http.put(f"/fhir/Patient/{pid}", json=patient, headers=admin)
        assert put.status_code in (200, 201), put.text


def assert_page_headers(headers: dict[str, str]) -> None:
    """What the browser was told about caching, framing and the page's powers."""
    assert headers["cache-control"] == "no-store"
    assert headers["x-frame-options"] == "DENY"
    csp = [d.strip() for d in headers["content-security-policy"].split(";")]
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp


def sign_in(page: Page, site: Site, state: str, challenge: str, password: str) -> Response:
    """Open the authorize URL, check the login page, submit the form; the POST's response."""
    opened = page.goto(site.authorize_url(state, challenge))
    assert opened is not None and opened.status == 200
    assert_page_headers(opened.headers)
    page.fill("#username", "pat")
    page.fill("#password", password)
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.click("#login")
    return posted.value


def test_standalone_launch_grants_fewer_scopes(page: Page, site: Site) -> None:
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)
    consent = sign_in(page, site, state, challenge, PASSWORD)
    assert consent.status == 200
    page.locator("#approve").wait_for()
    assert_page_headers(consent.headers)
    # the approval's redirect leaves this origin: the form-action must allow it
    assert (
        f"form-action 'self' {site.listener.origin};" in consent.headers["content-security-policy"]
    )

    boxes = page.locator("input[name=grant]")
    offered = [boxes.nth(i).get_attribute("value") for i in range(boxes.count())]
    assert UNTICKED in offered and all(boxes.nth(i).is_checked() for i in range(boxes.count()))
    assert page.locator("#patient").count() == 0  # a patient user gets their own record
    page.uncheck(f"input[name=grant][value='{UNTICKED}']")
    page.click("#approve")
    page.wait_for_url(lambda url: url.startswith(site.listener.redirect_uri + "?"))
    assert page.locator("#done").is_visible()

    back = parse_qs(urlsplit(page.url).query)
    assert back["state"] == [state]
    assert back["iss"] == [f"{site.server.base}/auth"]
    assert site.listener.callbacks()[-1] == page.url.removeprefix(site.listener.origin)
    exchange = {
        "grant_type": "authorization_code",
        "code": back["code"][0],
        "redirect_uri": site.listener.redirect_uri,
        "client_id": "app",
        "code_verifier": verifier,
    }
    token = site.http.post("/auth/token", data=exchange)
    assert token.status_code == 200, token.text
    body = token.json()
    granted = body["scope"].split()
    assert UNTICKED not in granted and "refresh_token" not in body
    assert set(granted) == {s for s in offered if s != UNTICKED}
    assert body["patient"] == "p1" and body["id_token"]

    bearer = {"Authorization": f"Bearer {body['access_token']}"}
    own = site.http.get("/fhir/Patient/p1", headers=bearer)
    assert own.status_code == 200, own.text
    assert own.json()["id"] == "p1" and own.json()["name"][0]["family"] == "Doe"
    other = site.http.get("/fhir/Patient/p2", headers=bearer)
    assert other.status_code in (403, 404)
    again = site.http.post("/auth/token", data=exchange)
    assert again.status_code == 400  # the code is single-use


def test_wrong_password_shows_an_error_and_issues_no_code(page: Page, site: Site) -> None:
    _, challenge = pkce_pair()
    before = len(site.listener.callbacks())
    refused = sign_in(page, site, "s-1", challenge, "not-the-password")
    assert refused.status == 401
    assert_page_headers(refused.headers)
    assert "wrong user name or password" in page.inner_text("#error").lower()
    assert page.url.startswith(f"{site.server.base}/auth/authorize")
    assert page.locator("#approve").count() == 0 and page.locator("#password").is_visible()
    assert len(site.listener.callbacks()) == before


def test_login_page_cannot_be_framed(page: Page, site: Site) -> None:
    _, challenge = pkce_pair()
    login = site.authorize_url("s-2", challenge)
    page.goto(f"{site.listener.origin}/frame?{urlencode({'src': login})}")
    page.wait_for_function("document.title === 'loaded'")
    framed = page.frame_locator("#f")
    assert framed.locator("#username").count() == 0
    # the same URL opened at top level does show the form: the framing is what is refused
    page.goto(login)
    assert page.locator("#username").is_visible()


def test_deny_sends_access_denied_back_to_the_app(page: Page, site: Site) -> None:
    _, challenge = pkce_pair()
    consent = sign_in(page, site, "s-3", challenge, PASSWORD)
    assert consent.status == 200
    page.click("#deny")
    page.wait_for_url(lambda url: url.startswith(site.listener.redirect_uri + "?"))
    back = parse_qs(urlsplit(page.url).query)
    assert back["error"] == ["access_denied"] and back["state"] == ["s-3"]
    assert "code" not in back
