"""Sign-in sessions: the authorization server remembers that a browser signed in.

Without one, every trip through ``/auth/authorize`` asked for the password again: a
viewer reloaded on a reading-room workstation, or its silent token renewal in a
hidden frame (``prompt=none``), which could only ever answer ``login_required``.

A password sign-in starts a session and sets its cookie: a random value the store keeps
only as a digest; HttpOnly; SameSite=Lax, so a browser sends it on a top-level
navigation to the authorize endpoint (an app's redirect, from any site) and in a
same-site frame, but not with a cross-site form or subrequest, nor in a frame of
another site (a viewer on another site renews with a refresh token instead). Under an
https issuer it is ``__Host-radhub_signin`` (Secure, Path=/, so no sibling subdomain
can plant one); under http, ``radhub_signin`` on the issuer's path. It carries no
Max-Age: closing the browser ends it on the browser's side. A new sign-in replaces the
browser's previous session (no session fixation). The session lasts ``session_idle``
seconds from its last use and never more than ``session_max`` from the sign-in; a
change to the account (password, roles, fhirUser) or its deactivation ends it at its
next use; sign-out (``/auth/logout``) ends it.

The session also remembers, per client, what the user decided on the consent page,
so an app asking again for no more than it was offered gets its code without a page
(OpenID Connect Core §3.1.2.4); never for an EHR launch, whose user the EHR knows and
radhub does not. ``prompt=login``, ``prompt=consent`` and ``max_age`` (§3.1.2.1) still
force the pages.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from urllib.parse import urlsplit

from starlette.responses import Response

from fhir_server.storage.auth_port import AuthData, Consent, SignInSession, UserRecord
from smart.config import AuthConfig
from smart.secrets import digest, new_token

SESSION_COOKIE = "radhub_signin"
HOST_COOKIE = f"__Host-{SESSION_COOKIE}"  # under https


class Sessions:
    """Starts, finds, moves on and ends sign-in sessions (module docstring)."""

    def __init__(
        self, config: AuthConfig, auth: AuthData, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._auth = auth
        self._idle = config.session_idle
        self._max = config.session_max
        issuer = urlsplit(config.issuer)
        self._secure = issuer.scheme == "https"
        self.cookie_name = HOST_COOKIE if self._secure else SESSION_COOKIE
        self._path = "/" if self._secure else issuer.path or "/"
        self._clock = clock

    async def begin(self, user: UserRecord, auth_time: float, replacing: str | None) -> str:
        """A new session for ``user``; returns the cookie's value. The browser's
        previous session (``replacing``, its cookie) ends."""
        if replacing:
            await self._auth.delete_session(digest(replacing))
        value = new_token()
        ends_at = auth_time + self._max
        expires_at = min(ends_at, self._clock() + self._idle)
        stamp = account_stamp(user)
        session = SignInSession(digest(value), user.id, auth_time, expires_at, ends_at, (), stamp)
        await self._auth.put_session(session)
        return value

    async def find(self, cookie: str | None) -> SignInSession | None:
        """The live session this cookie names, its idle limit moved on; None if none."""
        session = await self._live(cookie)
        if session is None:
            return None
        moved = min(session.ends_at, self._clock() + self._idle)
        if not await self._auth.update_session(session.session_hash, {"expires_at": moved}):
            return None  # ended meanwhile
        return replace(session, expires_at=moved)

    async def _live(self, cookie: str | None) -> SignInSession | None:
        return await self.named(digest(cookie)) if cookie else None

    async def named(self, session_hash: str) -> SignInSession | None:
        """The live session with this hash (a login ticket names its session so)."""
        session = await self._auth.get_session(session_hash)
        if session is None or self._clock() >= session.expires_at:
            return None
        return session

    async def remember(self, session: SignInSession, consent: Consent) -> None:
        """Keep ``consent`` in ``session``, in place of what was decided for that client
        before (nothing if the session has ended meanwhile)."""
        await self._decide(session, consent.client_id, consent)

    async def forget(self, session: SignInSession, client_id: str) -> None:
        """Drop what the session remembered for ``client_id`` (the user denied it)."""
        await self._decide(session, client_id, None)

    async def _decide(
        self, session: SignInSession, client_id: str, consent: Consent | None
    ) -> None:
        kept = tuple(c for c in session.consents if c.client_id != client_id)
        consents = kept if consent is None else (*kept, consent)
        await self._auth.update_session(session.session_hash, {"consents": consents})

    async def end(self, cookie: str | None) -> SignInSession | None:
        """End the cookie's session; returns it, if it was live."""
        session = await self._live(cookie)
        if cookie:
            await self._auth.delete_session(digest(cookie))
        return session

    async def drop(self, session: SignInSession) -> None:
        """End a session found no longer to count (its account changed)."""
        await self._auth.delete_session(session.session_hash)

    def cookie(self, request_cookies: Mapping[str, str]) -> str | None:
        """The session cookie's value among a request's cookies."""
        return request_cookies.get(self.cookie_name)

    def set_cookie(self, response: Response, value: str) -> None:
        response.set_cookie(
            self.cookie_name,
            value,
            path=self._path,
            secure=self._secure,
            httponly=True,
            samesite="lax",
        )

    def clear_cookie(self, response: Response) -> None:
        response.delete_cookie(
            self.cookie_name, path=self._path, secure=self._secure, httponly=True, samesite="lax"
        )


def account_stamp(user: UserRecord) -> str:
    """Changes whenever what a session stands for does: the password (each hash has
    its own salt), the roles, or the fhirUser (a patient user re-pointed)."""
    what = "\n".join((user.hashed_password, " ".join(sorted(user.roles)), user.fhir_user or ""))
    return digest(what)[:16]


def signs_in(session: SignInSession, user: UserRecord, now: float) -> bool:
    """Whether ``session`` still signs ``user`` in: not past its limits, the account
    active and unchanged since the sign-in. (A lock only suspends a session: it is not
    looked at here.)"""
    return (
        session.user_id == user.id
        and now < session.expires_at
        and user.is_active
        and account_stamp(user) == session.account_stamp
    )


def consent_for(session: SignInSession, client_id: str) -> Consent | None:
    """What the session's user decided for this client, if anything."""
    return next((c for c in session.consents if c.client_id == client_id), None)
