"""The authorization endpoint (RFC 6749 §4.1.1, SMART App Launch 2.x): check the
request, sign the user in (or find their sign-in session, ``smart.sessions``), ask
consent (fewer scopes may be granted, a patient picked) unless the session remembers
it, and send the client back a short-lived single-use code.

Errors before the client and its exact redirect URI are known are shown as a
page; every later error goes back to the client as ``error`` + ``state``.
See https://build.fhir.org/ig/HL7/smart-app-launch/app-launch.html#obtain-authorization-code
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

from starlette.responses import RedirectResponse, Response

from fhir_server.access.roles import patient_of
from fhir_server.storage.auth_port import (
    AuthData,
    AuthorizationCode,
    ClientRecord,
    Consent,
    GrantInfo,
    LaunchContext,
    SignInSession,
    UserRecord,
)
from smart import pages
from smart.config import AuthConfig
from smart.errors import (
    AccessDenied,
    ConsentRequired,
    InvalidScope,
    LoginRequired,
    OAuthError,
    UnsupportedResponseType,
)
from smart.id_token_hint import BadHint, hint_claims
from smart.keys import KeyRing
from smart.launch import Launches
from smart.patients import PatientPicker
from smart.scopes import cap_to_client, cap_to_roles, has_resource_scope, split
from smart.secrets import digest, new_token
from smart.sessions import Sessions, consent_for, signs_in
from smart.tickets import Tickets
from smart.users import Accounts, LockedOut

AUTHORIZE_PARAMS = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "aud",
    "code_challenge",
    "code_challenge_method",
    "launch",
    "nonce",
    "prompt",
    "max_age",
    "id_token_hint",
)

_MAX_AGE = re.compile(r"[0-9]{1,10}")  # seconds; int() of more digits is refused

AuditHook = Callable[[str, int, str, str | None, str, str | None], None]
"""``(event, status, description, user_id, client_id, address)``: what the flow reports
for the audit trail (the client asking, and the browser's network address)."""


class PageError(Exception):
    """An error shown to the user, never redirected (unknown client or redirect URI)."""


@dataclass(frozen=True, slots=True)
class Checked:
    """A valid authorize request: its parameters, client and EHR launch context, the
    network address it came from (for the audit trail), and the user an
    ``id_token_hint`` names (the app expects that user to be the one signed in)."""

    params: dict[str, str]
    client: ClientRecord
    launch: LaunchContext | None
    address: str | None = None
    hinted_user: str | None = None


@dataclass(frozen=True, slots=True)
class Offer:
    """What the consent page offers: scopes, and the patient (fixed, or to pick)."""

    scopes: list[str]
    patient: str | None
    encounter: str | None
    pick_patient: bool


class RedirectError(Exception):
    """An OAuth error to send back to the client's redirect URI."""

    def __init__(self, error: OAuthError, checked_params: Mapping[str, str]) -> None:
        super().__init__(error.description)
        self.error = error
        self.params = checked_params

    def response(self) -> Response:
        query = {"error": self.error.error, "error_description": self.error.description}
        if state := self.params.get("state"):
            query["state"] = state
        return redirect(self.params["redirect_uri"], query)


def redirect(uri: str, query: Mapping[str, str]) -> RedirectResponse:
    """A 302 to ``uri`` with ``query`` added to its own, never cached."""
    sep = "&" if "?" in uri else "?"
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    target = f"{uri}{sep}{urlencode(query)}" if query else uri
    return RedirectResponse(target, status_code=302, headers=headers)


class AuthorizeFlow:
    """The steps of ``/auth/authorize``; each returns the response to send."""

    def __init__(
        self,
        config: AuthConfig,
        auth: AuthData,
        accounts: Accounts,
        launches: Launches,
        picker: PatientPicker,
        tickets: Tickets,
        sessions: Sessions,
        keyring: KeyRing,
        audit: AuditHook,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sessions = sessions
        self._keyring = keyring
        self._config = config
        self._auth = auth
        self._accounts = accounts
        self._launches = launches
        self._picker = picker
        self._tickets = tickets
        self._audit = audit
        self._clock = clock

    async def check(self, raw: Mapping[str, str], address: str | None = None) -> Checked:
        """Validate the request; raises PageError or RedirectError."""
        params = {k: raw[k] for k in AUTHORIZE_PARAMS if raw.get(k)}
        client = await self._auth.get_client(params.get("client_id", ""))
        if client is None:
            raise PageError("unknown client_id")
        if params.get("redirect_uri") not in client.redirect_uris:
            raise PageError("redirect_uri is not registered for this client")
        problem = self._problem(params)
        if problem is not None:
            raise RedirectError(problem, params)
        launch = None
        if "launch" in params:
            launch = await self._launches.resolve(params["launch"], client.client_id)
            if launch is None:
                raise RedirectError(OAuthError("unknown or expired launch"), params)
        return Checked(params, client, launch, address, self._hinted_user(params))

    def _hinted_user(self, params: Mapping[str, str]) -> str | None:
        """The user an ``id_token_hint`` names: an id_token of ours issued to this client
        (an access token, whose audience is the FHIR server, is not one)."""
        if "id_token_hint" not in params:
            return None
        try:
            claims = hint_claims(params["id_token_hint"], self._keyring, self._config.issuer)
        except BadHint as exc:
            raise RedirectError(OAuthError(str(exc)), params) from exc
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if params.get("client_id") not in audiences or not claims.get("sub"):
            refused = OAuthError("id_token_hint is not an id_token issued to this client")
            raise RedirectError(refused, params)
        return str(claims["sub"])

    def _problem(self, params: Mapping[str, str]) -> OAuthError | None:
        if params.get("response_type") != "code":
            return UnsupportedResponseType("response_type must be code")
        if not params.get("state"):
            return OAuthError("state is required")
        if params.get("aud", "").rstrip("/") != self._config.audience:
            return OAuthError("aud must be this server's FHIR base URL")
        if not params.get("code_challenge") or params.get("code_challenge_method") != "S256":
            return OAuthError("PKCE with code_challenge_method S256 is required")
        if not params.get("scope"):
            return InvalidScope("scope is required")
        if "launch" in split(params.get("scope")) and "launch" not in params:
            return OAuthError("scope launch needs a launch parameter (EHR launch)")
        if not _MAX_AGE.fullmatch(params.get("max_age", "0")):
            return OAuthError("max_age must be a number of seconds")
        return _prompt_problem(split(params.get("prompt")))

    async def start(self, checked: Checked, cookie: str | None) -> Response:
        """The login page; or, for a browser with a sign-in session, the consent page,
        or the code at once if the session remembers the user's consent."""
        prompt = split(checked.params.get("prompt"))
        session = None if "login" in prompt else await self._sessions.find(cookie)
        user = await self._session_user(checked, session)
        if session is None or user is None:
            if "none" in prompt:
                raise RedirectError(LoginRequired("the user is not signed in"), checked.params)
            return pages.login_page(checked.params, _name(checked.client))
        self._record(checked, "login", 200, "user signed in by a sign-in session", user.id)
        offer = self._offer(checked, user)
        if not offer.scopes:
            raise RedirectError(InvalidScope("no requested scope can be granted"), checked.params)
        # An EHR launch always shows the page, naming who is signed in: the EHR knows
        # its user, and radhub must not answer it for whoever holds this browser's session.
        if "consent" not in prompt and checked.launch is None:
            silent = "none" in prompt
            grant = await self._remembered(checked, user, offer, session, silent)
            if grant is not None:
                return await self._issue_code(checked, grant, " (consent remembered)")
        if "none" in prompt:
            problem = ConsentRequired("the user has not consented to this request")
            raise RedirectError(problem, checked.params)
        ticket = self._tickets.issue(
            user.id, checked.params, session.auth_time, session.session_hash
        )
        return await self._consent_page(checked, user, ticket)

    async def _session_user(
        self, checked: Checked, session: SignInSession | None
    ) -> UserRecord | None:
        """The session's user, if still active, with the password they signed in with,
        signed in recently enough (max_age), and the one the app expects (a hint)."""
        if session is None:
            return None
        if checked.hinted_user is not None and checked.hinted_user != session.user_id:
            return None  # someone else signed in on this browser since
        max_age = checked.params.get("max_age")
        if max_age is not None and self._clock() - session.auth_time > int(max_age):
            return None
        user = await self._auth.get_user(session.user_id)
        return user if await self._counts(session, user) else None

    async def _counts(self, session: SignInSession, user: UserRecord | None) -> bool:
        """Whether ``session`` still signs ``user`` in. A deleted or deactivated account,
        or one changed since the sign-in (password, roles, fhirUser), ends it; a lock
        (failed logins, perhaps someone else's) only suspends it."""
        if user is None or user.id != session.user_id:
            return False
        now = self._clock()
        if not signs_in(session, user, now):
            await self._sessions.drop(session)
            return False
        return user.locked_until <= now

    async def _remembered(
        self,
        checked: Checked,
        user: UserRecord,
        offer: Offer,
        session: SignInSession,
        silent: bool,
    ) -> GrantInfo | None:
        """The grant the user's remembered consent gives this request, if it covers it:
        nothing beyond what the consent page offered then; a patient to pick only when no
        page may be shown (``silent``: the viewer renewing), and then the one picked
        before, if the user may still pick them (else the user picks again)."""
        consent = consent_for(session, checked.client.client_id)
        if consent is None or not set(offer.scopes) <= set(consent.offered):
            return None
        granted = [s for s in offer.scopes if s in consent.granted]
        patient = offer.patient
        if offer.pick_patient:
            if not silent:
                return None
            patient = consent.patient
            if patient is None or not await self._picker.may_choose(user, patient):
                return None
        if not granted:
            return None
        return self._grant(checked, user, granted, patient, offer.encounter, session.auth_time)

    async def login(
        self, checked: Checked, form: Mapping[str, str], cookie: str | None = None
    ) -> Response:
        """Check the password; on success start a sign-in session (replacing the
        browser's ``cookie``) and show the consent page."""
        username = form.get("username", "")
        try:
            user = await self._accounts.login(username, form.get("password", ""))
        except LockedOut:
            self._record(checked, "login", 429, "account locked after repeated failures", None)
            return self._login_again(checked, "Too many failed attempts; try again later.", 429)
        if user is None:
            self._record(checked, "login", 401, "wrong user name or password", None)
            return self._login_again(checked, "Wrong user name or password.", 401)
        self._record(checked, "login", 200, "user signed in", user.id)
        if checked.hinted_user is not None and checked.hinted_user != user.id:
            # OpenID Connect Core §3.1.2.1: the app asked for another user
            other = LoginRequired("the user who signed in is not the one id_token_hint names")
            raise RedirectError(other, checked.params)
        auth_time = self._clock()
        cookie = await self._sessions.begin(user, auth_time, replacing=cookie)
        ticket = self._tickets.issue(user.id, checked.params, auth_time, digest(cookie))
        response = await self._consent_page(checked, user, ticket)
        self._sessions.set_cookie(response, cookie)
        return response

    def _record(
        self, checked: Checked, event: str, status: int, description: str, user: str | None
    ) -> None:
        client_id = checked.client.client_id
        self._audit(event, status, description, user, client_id, checked.address)

    def _login_again(self, checked: Checked, message: str, status: int) -> Response:
        return pages.login_page(checked.params, _name(checked.client), message, status)

    async def _consent_page(
        self, checked: Checked, user: UserRecord, ticket: str, error: str | None = None
    ) -> Response:
        offer = self._offer(checked, user)
        if not offer.scopes:
            raise RedirectError(InvalidScope("no requested scope can be granted"), checked.params)
        patients = await self._picker.choices(user) if offer.pick_patient else None
        return pages.consent_page(
            checked.params,
            ticket,
            _name(checked.client),
            offer.scopes,
            patients,
            error,
            signed_in_as=user.email,
        )

    def _offer(self, checked: Checked, user: UserRecord) -> Offer:
        asked = split(checked.params.get("scope"))
        scopes = cap_to_roles(cap_to_client(asked, checked.client.scope), user.roles)
        if has_resource_scope(asked) and not has_resource_scope(scopes):
            scopes = []
        if checked.launch is not None:
            return Offer(scopes, checked.launch.patient, checked.launch.encounter, False)
        own = patient_of(user.fhir_user) if "patient" in user.roles else None
        if own is not None:
            return Offer(scopes, own, None, False)
        return Offer(scopes, None, None, "launch/patient" in asked)

    async def consent(
        self, checked: Checked, form: Mapping[str, str], grants: Sequence[str]
    ) -> Response:
        """Approve or deny; on approval redirect with a fresh code. The sign-in session
        the page was shown in must still count (not signed out since, the account
        unchanged), and remembers the decision."""
        signed_in = self._tickets.check(form.get("ticket", ""), checked.params)
        session = await self._sessions.named(signed_in.session) if signed_in else None
        user = await self._auth.get_user(signed_in.user_id) if signed_in else None
        if signed_in is None or session is None or not await self._counts(session, user):
            return self._login_again(checked, "Your sign-in expired; sign in again.", 401)
        assert user is not None  # _counts checked it
        offer = self._offer(checked, user)
        approved = form.get("decision") == "approve"
        granted = [s for s in offer.scopes if s in set(grants)] if approved else []
        patient = offer.patient
        if granted and offer.pick_patient:
            patient = form.get("patient", "")
            if not await self._picker.may_choose(user, patient):
                return await self._consent_page(checked, user, form["ticket"], "Pick a patient.")
        # Spent only on a final answer: the page above is shown again with the same ticket.
        if not await self._tickets.spend(signed_in):
            self._record(checked, "consent", 401, "login ticket used twice", user.id)
            return self._login_again(checked, "This sign-in was already used; sign in again.", 401)
        client_id = checked.client.client_id
        if not approved or not granted:
            await self._sessions.forget(session, client_id)
        if not approved:
            self._record(checked, "consent", 403, "the user denied access", user.id)
            raise RedirectError(AccessDenied("the user denied access"), checked.params)
        if not granted:
            raise RedirectError(AccessDenied("no scope was granted"), checked.params)
        if checked.launch is None:  # a launch's consent is never used again (start)
            picked = patient if offer.pick_patient else None
            decided = Consent(client_id, tuple(offer.scopes), tuple(granted), picked)
            await self._sessions.remember(session, decided)
        grant = self._grant(checked, user, granted, patient, offer.encounter, signed_in.auth_time)
        return await self._issue_code(checked, grant)

    def _grant(
        self,
        checked: Checked,
        user: UserRecord,
        granted: Sequence[str],
        patient: str | None,
        encounter: str | None,
        auth_time: float,
    ) -> GrantInfo:
        return GrantInfo(
            grant_id=str(uuid.uuid4()),
            client_id=checked.client.client_id,
            subject=user.id,
            scope=" ".join(granted),
            patient=patient,
            encounter=encounter,
            fhir_user=user.fhir_user,
            roles=user.roles,
            auth_time=auth_time,
            launched=checked.launch is not None,
        )

    async def _issue_code(self, checked: Checked, grant: GrantInfo, how: str = "") -> Response:
        code = new_token()
        await self._auth.put_code(
            AuthorizationCode(
                code_hash=digest(code),
                grant=grant,
                redirect_uri=checked.params["redirect_uri"],
                code_challenge=checked.params["code_challenge"],
                expires_at=self._clock() + self._config.code_ttl,
                nonce=checked.params.get("nonce"),
            )
        )
        description = f"code issued for scope {grant.scope}{how}"
        self._record(checked, "consent", 200, description, grant.subject)
        query = {"code": code, "state": checked.params["state"], "iss": self._config.issuer}
        return redirect(checked.params["redirect_uri"], query)


def _prompt_problem(prompt: Sequence[str]) -> OAuthError | None:
    """``prompt`` (OpenID Connect Core §3.1.2.1): ``none`` allows no page, so it cannot
    come with ``login`` or ``consent``, which ask for one."""
    if "none" in prompt and len(set(prompt)) > 1:
        return OAuthError("prompt none cannot be combined with other values")
    return None


def _name(client: ClientRecord) -> str:
    return client.name or client.client_id
