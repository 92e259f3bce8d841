"""Sign-in sessions: the authorization server remembers that a browser signed in.

Without one, every trip through ``/auth/authorize`` asked for the password again: a
viewer reloaded on a reading-room workstation, or its silent token renewal in a
hidden frame (``prompt=none``), which could only ever answer ``login_required``.

A password sign-in starts a session and sets the cookie ``radhub_signin``: a random
value the store keeps only as a digest; HttpOnly; Path=/auth; Secure when the issuer
is https; SameSite=Lax, so a browser sends it on a top-level navigation to the
authorize endpoint (an app's redirect, from any site) and in a same-site frame, but
not with a cross-site form or subrequest. A new sign-in replaces the browser's
previous session (no session fixation). The session lasts ``session_idle`` seconds
from its last use and never more than ``session_max`` from the sign-in; an account
made inactive ends it at its next use; sign-out (``/auth/logout``) ends it.

The session also remembers, per client, what the user decided on the consent page,
so an app asking again for no more than it was offered gets its code without a page
(OpenID Connect Core §3.1.2.4). ``prompt=login``, ``prompt=consent`` and ``max_age``
(§3.1.2.1) still force the pages. A password changed since the sign-in (say, an admin
resetting a compromised account) ends the session too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from urllib.parse import urlsplit

from starlette.responses import Response

from fhir_server.storage.auth_port import AuthData, Consent, SignInSession, UserRecord
from smart.config import AuthConfig
from smart.secrets import digest, new_token

SESSION_COOKIE = "radhub_signin"
COOKIE_PATH = "/auth"


class Sessions:
    """Starts, finds, moves on and ends sign-in sessions (module docstring)."""

    def __init__(
        self, config: AuthConfig, auth: AuthData, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._auth = auth
        self._idle = config.session_idle
        self._max = config.session_max
        self._secure = urlsplit(config.issuer).scheme == "https"
        self._clock = clock

    async def begin(self, user: UserRecord, auth_time: float, replacing: str | None) -> str:
        """A new session for ``user``; returns the cookie's value. The browser's
        previous session (``replacing``, its cookie) ends."""
        if replacing:
            await self._auth.delete_session(digest(replacing))
        value = new_token()
        ends_at = auth_time + self._max
        expires_at = min(ends_at, self._clock() + self._idle)
        stamp = password_stamp(user)
        session = SignInSession(digest(value), user.id, auth_time, expires_at, ends_at, (), stamp)
        await self._auth.put_session(session)
        return value

    async def find(self, cookie: str | None) -> SignInSession | None:
        """The live session this cookie names, its idle limit moved on; None if none."""
        session = await self._live(cookie)
        if session is None:
            return None
        moved = min(session.ends_at, self._clock() + self._idle)
        used = replace(session, expires_at=moved)
        await self._auth.put_session(used)
        return used

    async def _live(self, cookie: str | None) -> SignInSession | None:
        session = await self._auth.get_session(digest(cookie)) if cookie else None
        if session is None or self._clock() >= session.expires_at:
            return None
        return session

    async def remember(self, cookie: str | None, user_id: str, consent: Consent) -> None:
        """Keep ``consent`` in the cookie's session (if it is ``user_id``'s), in place of
        what was decided for that client before."""
        await self._decide(cookie, user_id, consent.client_id, consent)

    async def forget(self, cookie: str | None, user_id: str, client_id: str) -> None:
        """Drop what the session remembered for ``client_id`` (the user denied it)."""
        await self._decide(cookie, user_id, client_id, None)

    async def _decide(
        self, cookie: str | None, user_id: str, client_id: str, consent: Consent | None
    ) -> None:
        session = await self._live(cookie)  # one write below, not two
        if session is None or session.user_id != user_id:
            return
        kept = tuple(c for c in session.consents if c.client_id != client_id)
        consents = kept if consent is None else (*kept, consent)
        await self._auth.put_session(replace(session, consents=consents))

    async def end(self, cookie: str | None) -> SignInSession | None:
        """End the cookie's session; returns it, if it was live."""
        session = await self._live(cookie)
        if cookie:
            await self._auth.delete_session(digest(cookie))
        return session

    def set_cookie(self, response: Response, value: str) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            value,
            max_age=self._max,
            path=COOKIE_PATH,
            secure=self._secure,
            httponly=True,
            samesite="lax",
        )

    def clear_cookie(self, response: Response) -> None:
        response.delete_cookie(
            SESSION_COOKIE, path=COOKIE_PATH, secure=self._secure, httponly=True, samesite="lax"
        )


def password_stamp(user: UserRecord) -> str:
    """Changes whenever the password does (each hash has its own salt)."""
    return digest(user.hashed_password)[:16]


def consent_for(session: SignInSession, client_id: str) -> Consent | None:
    """What the session's user decided for this client, if anything."""
    return next((c for c in session.consents if c.client_id == client_id), None)
