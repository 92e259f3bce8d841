"""What a browser page asked radhub and how it was answered: each exchange (kind,
status, the bearer token it carried), the requests that failed, the CORS preflights
and CORS failures Chromium reports over its DevTools protocol (Playwright's own
events do not show preflights), and the page's console errors.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, urlsplit

if TYPE_CHECKING:
    from playwright.sync_api import ConsoleMessage, Page, Request, Response

T = TypeVar("T")

# what each radhub path is, by its path alone
KINDS = (
    ("discovery", re.compile(r"^/auth/\.well-known/openid-configuration$")),
    ("authorize", re.compile(r"^/auth/authorize$")),
    ("token", re.compile(r"^/auth/token$")),
    ("revoke", re.compile(r"^/auth/revoke$")),
    ("logout", re.compile(r"^/auth/logout$")),
    ("studies", re.compile(r"^/dicomweb/studies$")),
    ("series", re.compile(r"^/dicomweb/studies/[^/]+/series$")),
    ("metadata", re.compile(r"^/dicomweb/studies/[^/]+/series/[^/]+/metadata$")),
    ("frames", re.compile(r"^/dicomweb/studies/[^/]+/series/[^/]+/instances/[^/]+/frames/")),
)
STUDY_PATH = re.compile(r"^/dicomweb/studies/([^/]+)/")
# CORS refusals, and a page of radhub's refused in a frame (its frame-ancestors)
BLOCKED_WORDS = ("cors", "access-control", "cross-origin", "blocked by", "security policy")
UNCAUGHT = "uncaught: "
ROUTE_FAILED = "Error Boundary"  # OHIF's message for a route that threw


@dataclass
class Exchange:
    method: str
    path: str
    kind: str
    status: int
    bearer: str | None
    grant_type: str | None  # of a token request
    query: dict[str, list[str]]
    location: str | None  # where a redirect sent the browser
    body: Any = None  # a token response's JSON

    def __str__(self) -> str:
        return f"{self.method} {self.path} -> {self.status}"


@dataclass
class Traffic:
    radhub: str
    exchanges: list[Exchange] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    preflights: list[tuple[str, int]] = field(default_factory=list)
    preflight_answers: list[dict[str, str]] = field(default_factory=list)  # their headers
    cors_failures: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    # requests the page itself cancelled (net::ERR_ABORTED): OHIF drops the frame
    # requests still under way for a series the user leaves. Not a server failure: a
    # response radhub broke off shows as ERR_CONNECTION_*, ERR_EMPTY_RESPONSE or
    # ERR_INCOMPLETE_CHUNKED_ENCODING, which stay failures.
    cancelled: list[str] = field(default_factory=list)

    def is_study_search(self, response: Response) -> bool:
        return _kind(self._path(response.url)) == "studies"

    elsewhere: list[str] = field(default_factory=list)  # requests to other hosts

    def _path(self, url: str) -> str:
        return urlsplit(url).path if url.startswith(self.radhub + "/") else ""

    def on_request(self, request: Request) -> None:
        if not request.url.startswith(("http://127.0.0.1:", "data:", "blob:")):
            self.elsewhere.append(request.url)

    def on_response(self, response: Response) -> None:
        path = self._path(response.url)
        if not path:
            return
        request = response.request
        kind = _kind(path)
        grant = parse_qs(request.post_data or "").get("grant_type", [None])[0]
        body = response.json() if kind == "token" and response.ok else None
        auth = request.headers.get("authorization", "")
        bearer = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else None
        query = parse_qs(urlsplit(response.url).query)
        location = response.headers.get("location")
        self.exchanges.append(
            Exchange(
                request.method, path, kind, response.status, bearer, grant, query, location, body
            )
        )

    def on_failure(self, request: Request) -> None:
        if self._path(request.url):
            what = f"{request.method} {request.url}: {request.failure}"
            aborted = request.failure == "net::ERR_ABORTED"
            (self.cancelled if aborted else self.failures).append(what)

    def on_console(self, message: ConsoleMessage) -> None:
        # OHIF reports a route that failed (an exception in it) at the debug level
        if message.type == "error" or ROUTE_FAILED in message.text:
            self.console_errors.append(message.text)

    def on_cdp_response(self, event: dict[str, Any]) -> None:
        if event.get("type") == "Preflight":
            answer = event["response"]
            self.preflights.append((answer["url"], answer["status"]))
            self.preflight_answers.append({k.lower(): v for k, v in answer["headers"].items()})

    def on_cdp_failure(self, event: dict[str, Any]) -> None:
        if event.get("corsErrorStatus") or event.get("blockedReason"):
            reason = event.get("corsErrorStatus") or event.get("blockedReason")
            self.cors_failures.append(f"{event.get('type')} {event.get('errorText')}: {reason}")

    def kinds(self) -> dict[str, list[str]]:
        """Kind -> the grant types (token requests) or paths asked for."""
        seen: dict[str, list[str]] = {}
        for e in self.exchanges:
            seen.setdefault(e.kind, []).append(e.grant_type or e.path)
        return seen

    def access_tokens(self) -> list[str]:
        """The access tokens radhub handed out, in order."""
        return [e.body["access_token"] for e in self.exchanges if e.body]

    def bearers(self, kind: str, since: int = 0) -> set[str | None]:
        """The tokens sent on exchanges of ``kind`` (``dicomweb``: any DICOMweb call)."""
        chosen = self.exchanges[since:]
        if kind == "dicomweb":
            return {e.bearer for e in chosen if e.path.startswith("/dicomweb/")}
        return {e.bearer for e in chosen if e.kind == kind}

    def preflighted(self, prefix: str) -> bool:
        """Whether calls under ``/prefix/`` were preflighted, and radhub answered: its
        answers name a max age, the one Playwright gives while it intercepts requests
        (and then never sends the preflight on) does not."""
        asked = [
            answer
            for (url, _), answer in zip(self.preflights, self.preflight_answers, strict=True)
            if urlsplit(url).path.startswith(f"/{prefix}/")
        ]
        return bool(asked) and all("access-control-max-age" in answer for answer in asked)

    def studies_opened(self) -> set[str]:
        return {m[1] for e in self.exchanges if (m := STUDY_PATH.match(e.path))}

    def wait_for(
        self,
        page: Page,
        kind: str | Callable[[Exchange], bool],
        since: int = 0,
        timeout: float = 30.0,
    ) -> Exchange:
        """The first exchange of ``kind`` (or a token request of that grant type, or one
        ``kind`` accepts) from the ``since``-th on, once seen."""
        wanted = kind if callable(kind) else lambda e: kind in (e.kind, e.grant_type)
        seen = until(page, lambda: [e for e in self.exchanges[since:] if wanted(e)], timeout)
        return seen[0]

    def assert_clean(self) -> None:
        """Every answer a success or a redirect, nothing failed, no CORS trouble, no
        uncaught exception in the page, no OHIF route that failed."""
        refused = [str(e) for e in self.exchanges if e.status >= 400]
        bad_preflights = [p for p in self.preflights if not 200 <= p[1] < 300]
        console = [
            m
            for m in self.console_errors
            if m.startswith(UNCAUGHT)
            or ROUTE_FAILED in m
            or any(w in m.lower() for w in BLOCKED_WORDS)
        ]
        problems = (refused, self.failures, bad_preflights, self.cors_failures, console)
        assert not any(problems), self.report()

    def report(self) -> str:
        lines = ["radhub answered:", *(f"  {e}" for e in self.exchanges)]
        lines += [f"failed: {f}" for f in self.failures]
        lines += [f"cancelled by the page: {f}" for f in self.cancelled]
        lines += [f"preflight: {url} -> {status}" for url, status in self.preflights]
        lines += [f"CORS failure: {f}" for f in self.cors_failures]
        lines += [f"console error: {m}" for m in self.console_errors]
        return "\n".join(lines)


def until(page: Page, condition: Callable[[], T], timeout: float = 30.0) -> T:
    """``condition()`` once true, letting the page's events in meanwhile (they reach
    Python only while Playwright is called); Playwright's timeout error after ``timeout``."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise PlaywrightTimeout(f"not seen within {timeout:.0f} s")
        page.wait_for_timeout(100)
    return result


def _kind(path: str) -> str:
    return next((name for name, pattern in KINDS if pattern.match(path)), "other")


def watch(page: Page, radhub: str) -> Traffic:
    """Record ``page``'s traffic with radhub from now on."""
    traffic = Traffic(radhub)
    page.on("request", traffic.on_request)
    page.on("response", traffic.on_response)
    page.on("requestfailed", traffic.on_failure)
    page.on("pageerror", lambda error: traffic.console_errors.append(f"{UNCAUGHT}{error}"))
    page.on("console", traffic.on_console)
    cdp = page.context.new_cdp_session(page)
    cdp.on("Network.responseReceived", traffic.on_cdp_response)
    cdp.on("Network.loadingFailed", traffic.on_cdp_failure)
    cdp.send("Network.enable")
    return traffic
