"""The HTML the authorisation server shows a person: login, consent (with the
patient picker), and errors that cannot be sent back to the client.

Plain server-rendered forms, no script: every value is escaped, the pages are
never cached, may not be framed (clickjacking), and carry the authorize
request forward in hidden fields (no cookies; the login ticket proves the
login step, see ``tickets``).

The forms post to this server, whose answer may be a redirect to the client's
registered redirect URI; browsers apply CSP ``form-action`` to that redirect
too (Chromium blocks it), so the pages allow that one origin besides 'self'.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from urllib.parse import urlencode, urlsplit

from starlette.responses import HTMLResponse

PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'",
    # The authorize query never leaves in a Referer; our own forms' POSTs keep their
    # Origin (with no-referrer a browser sends "Origin: null", which the server's
    # cross-site form check cannot tell from another site's sandboxed form).
    "Referrer-Policy": "same-origin",
}

# A CSP source the redirect URI reduces to: ``scheme://host[:port]``, or ``scheme:``
# for a native app's private-use scheme (RFC 8252 §7.1). Anything else is left out.
_SOURCE = re.compile(r"[a-z][a-z0-9+.-]*:(//([a-z0-9.-]+|\[[0-9a-f:.]+\])(:[0-9]+)?)?")

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem}"
    "label{display:block;margin:.5rem 0}input[type=text],input[type=password],select"
    "{width:100%;padding:.4rem}button{margin:.8rem .4rem 0 0;padding:.4rem 1rem}"
    ".error{color:#a00}"
)


def redirect_source(redirect_uri: str) -> str | None:
    """The CSP source expression matching a redirect URI's origin, if it has a safe one.
    See https://www.w3.org/TR/CSP3/#grammardef-source-expression"""
    parts = urlsplit(redirect_uri.strip().lower())
    source = f"{parts.scheme}:"
    if parts.netloc:
        host = parts.netloc.rpartition("@")[2]
        source = f"{parts.scheme}://{host}"
    return source if _SOURCE.fullmatch(source) else None


def page_headers(redirect_uri: str | None = None) -> dict[str, str]:
    """The headers of every page; the forms may also lead to ``redirect_uri``."""
    source = redirect_source(redirect_uri) if redirect_uri else None
    if source is None:
        return PAGE_HEADERS
    csp = PAGE_HEADERS["Content-Security-Policy"].replace(
        "form-action 'self'", f"form-action 'self' {source}"
    )
    return {**PAGE_HEADERS, "Content-Security-Policy": csp}


def _page(
    title: str, body: str, status: int = 200, redirect_uri: str | None = None
) -> HTMLResponse:
    html = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<meta name=viewport content='width=device-width'><title>{escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><h1>{escape(title)}</h1>{body}</body></html>"
    )
    return HTMLResponse(html, status_code=status, headers=page_headers(redirect_uri))


def _hidden(params: Mapping[str, str]) -> str:
    return "".join(
        f'<input type=hidden name="{escape(k)}" value="{escape(v)}">' for k, v in params.items()
    )


def _error(message: str | None) -> str:
    return f"<p class=error role=alert id=error>{escape(message)}</p>" if message else ""


def login_page(
    params: Mapping[str, str], client_name: str, error: str | None = None, status: int = 200
) -> HTMLResponse:
    """Ask for a user name and password."""
    body = (
        f"<p>{escape(client_name)} asks to access radhub on your behalf.</p>{_error(error)}"
        f"<form method=post action=authorize>{_hidden(params)}"
        "<input type=hidden name=step value=login>"
        "<label>User name <input type=text name=username id=username required "
        "autocomplete=username autofocus></label>"
        "<label>Password <input type=password name=password id=password required "
        "autocomplete=current-password></label>"
        "<button type=submit id=login>Sign in</button></form>"
    )
    return _page("Sign in to radhub", body, status, params.get("redirect_uri"))


def consent_page(
    params: Mapping[str, str],
    ticket: str,
    client_name: str,
    scopes: Sequence[str],
    patients: Iterable[tuple[str, str]] | None,
    error: str | None = None,
    *,
    signed_in_as: str = "",
) -> HTMLResponse:
    """List the scopes asked (all checked; the user may uncheck) and, for a
    standalone launch, the patients the user may choose from; name the user signed in,
    with a way to sign in as someone else (the same request, ``prompt=login``)."""
    items = "".join(
        f'<label><input type=checkbox name=grant value="{escape(s)}" checked> '
        f"<code>{escape(s)}</code></label>"
        for s in scopes
    )
    picker = ""
    if patients is not None:
        options = "".join(
            f'<option value="{escape(pid)}">{escape(name)} ({escape(pid)})</option>'
            for pid, name in patients
        )
        picker = (
            f"<label>Patient <select name=patient id=patient required>{options}</select></label>"
        )
    switch = escape(f"authorize?{urlencode({**params, 'prompt': 'login'})}")
    who = (
        f"<p>Signed in as <b id=signed-in-as>{escape(signed_in_as)}</b>. "
        f'<a id=switch-user href="{switch}">Not you?</a></p>'
        if signed_in_as
        else ""
    )
    body = (
        f"{who}<p>{escape(client_name)} asks for:</p>{_error(error)}"
        f"<form method=post action=authorize>{_hidden(params)}"
        f'<input type=hidden name=step value=consent><input type=hidden name=ticket value="'
        f'{escape(ticket)}">'
        f"<fieldset><legend>Permissions</legend>{items}</fieldset>{picker}"
        "<button type=submit name=decision value=approve id=approve>Allow</button>"
        "<button type=submit name=decision value=deny id=deny>Deny</button></form>"
    )
    return _page("Allow access?", body, redirect_uri=params.get("redirect_uri"))


def error_page(message: str, status: int = 400) -> HTMLResponse:
    """An error that must not be redirected (unknown client or redirect URI)."""
    return _page("Authorization error", _error(message), status)


def signed_out_page() -> HTMLResponse:
    """The end of a sign-out with no way back to the app registered."""
    return _page(
        "Signed out", "<p id=signed-out>You are signed out. You may close this window.</p>"
    )
