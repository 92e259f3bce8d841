"""The authorisation server's HTTP edge: thin routes over the flows.

``AuthServer.build(...)`` wires the parts from what the composition root
hands over (store, keys, verifier, policy, audit); ``router()`` returns the
routes to mount: ``/auth/authorize``, ``/auth/token``, ``/auth/introspect``,
``/auth/revoke``, ``/auth/launch``, the admin API under ``/auth/admin``
(``smart.admin``), ``/fhir/.well-known/smart-configuration`` and the OpenID
Provider metadata, ``/auth/.well-known/openid-configuration``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Protocol
from urllib.parse import urlsplit

from fastapi import APIRouter
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from fhir_server.access import AccessPolicy, AuthContext, ScopeSet, TokenVerifier, bearer_token
from fhir_server.audit import AuditRecord
from fhir_server.errors import FhirError, Forbidden
from fhir_server.interactions.services import utc_now
from fhir_server.storage.base import Store
from smart import pages
from smart.admin import AdminApi
from smart.authorize import AuthorizeFlow, Checked, PageError, RedirectError, redirect
from smart.clients import ClientAuthenticator
from smart.config import AuthConfig
from smart.discovery import openid_configuration, smart_configuration
from smart.errors import NO_STORE, InvalidClient, OAuthError
from smart.grants import TokenGrants
from smart.housekeeping import AuthPurge
from smart.introspection import Introspection
from smart.issuer import TokenIssuer
from smart.jwks_fetch import JwksSource
from smart.keys import DEFAULT_ALG, KeyRing
from smart.launch import Launches, UnknownClient
from smart.logout import Logout, LogoutRefused
from smart.patients import PatientPicker
from smart.secrets import password_helper
from smart.sessions import Sessions
from smart.tickets import Tickets
from smart.users import Accounts, LoginPolicy

# What an OAuth form may hold: a few dozen short fields (the longest is a client
# assertion JWT). Starlette's defaults (1000 fields of 1 MiB each) let one
# unauthenticated request make the server hold a GiB.
FORM_LIMITS: dict[str, int] = {"max_files": 0, "max_fields": 200, "max_part_size": 64 * 1024}


class AuditSink(Protocol):
    def record(self, record: AuditRecord) -> None: ...


class AuthServer:
    """Everything behind the ``/auth`` endpoints."""

    def __init__(
        self,
        config: AuthConfig,
        *,
        flow: AuthorizeFlow,
        sessions: Sessions,
        purge: AuthPurge,
        clients: ClientAuthenticator,
        grants: TokenGrants,
        introspection: Introspection,
        launches: Launches,
        verifier: TokenVerifier,
        audit: AuditSink,
        admin: AdminApi | None = None,
        signing_alg: str = DEFAULT_ALG,
        logout: Logout | None = None,
    ) -> None:
        self.config = config
        self.sessions = sessions
        self.purge = purge  # expired records; the app's lifespan runs it
        self.signing_alg = signing_alg
        self.logout = logout
        self.flow = flow
        self.clients = clients
        self.grants = grants
        self.introspection = introspection
        self.launches = launches
        self.verifier = verifier
        self.audit = audit
        self.admin = admin

    @classmethod
    def build(
        cls,
        config: AuthConfig,
        store: Store,
        keyring: KeyRing,
        verifier: TokenVerifier,
        policy: AccessPolicy,
        audit: AuditSink,
        *,
        fetch_jwks: JwksSource | None = None,
        clock: Callable[[], float] = time.time,
    ) -> AuthServer:
        """Wire the parts over one store and key ring."""
        helper = password_helper()
        login = LoginPolicy(config.max_failed_logins, config.lockout_seconds)
        accounts = Accounts(store.auth, helper=helper, policy=login, clock=clock)
        launches = Launches(store.auth, config.launch_ttl, clock=clock)
        tickets = Tickets(
            keyring, f"{config.issuer}#login", store.auth, config.login_ttl, clock=clock
        )
        picker = PatientPicker(store, policy)
        sessions = Sessions(config, store.auth, clock=clock)

        audit_event = partial(_audit, audit)  # the flow's AuditHook
        flow = AuthorizeFlow(
            config,
            store.auth,
            accounts,
            launches,
            picker,
            tickets,
            sessions,
            keyring,
            audit_event,
            clock=clock,
        )
        issuer = TokenIssuer(config, keyring, store.auth, clock=clock)
        clients = ClientAuthenticator(
            store.auth,
            helper,
            config.token_url,
            fetch_jwks=fetch_jwks,
            max_assertion_ttl=config.assertion_max_ttl,
            clock=clock,
        )
        return cls(
            config,
            flow=flow,
            sessions=sessions,
            purge=AuthPurge(store.auth, clock=clock),
            clients=clients,
            grants=TokenGrants(store.auth, issuer, clock=clock),
            introspection=Introspection(config, store.auth, verifier, clock=clock),
            launches=launches,
            verifier=verifier,
            audit=audit,
            admin=AdminApi(store.auth, accounts, helper, verifier, audit.record, clock=clock),
            signing_alg=keyring.alg,
            logout=Logout(config, store.auth, keyring),
        )

    def router(self) -> APIRouter:
        """The routes to mount at the application root (before the FHIR routes)."""
        router = APIRouter(tags=["auth"])
        router.add_api_route(
            "/fhir/.well-known/smart-configuration",
            self.discovery,
            methods=["GET"],
            summary="SMART discovery",
        )
        router.add_api_route(
            "/auth/.well-known/openid-configuration",
            self.openid_discovery,
            methods=["GET"],
            summary="OpenID Provider metadata",
        )
        _get_and_post(router, "/auth/authorize", self.authorize, "authorize", "Authorize")
        router.add_api_route("/auth/token", self.token, methods=["POST"], summary="Token")
        if self.logout is not None:  # RP-Initiated Logout §2: GET and POST
            summary = "End session (OpenID Connect RP-Initiated Logout)"
            _get_and_post(router, "/auth/logout", self.end_session, "logout", summary)
        router.add_api_route(
            "/auth/introspect", self.introspect, methods=["POST"], summary="Introspection"
        )
        router.add_api_route("/auth/revoke", self.revoke, methods=["POST"], summary="Revocation")
        router.add_api_route(
            "/auth/launch", self.launch, methods=["POST"], summary="Mint an EHR launch"
        )
        if self.admin is not None:
            router.include_router(self.admin.router())
        return router

    async def discovery(self) -> Response:
        return JSONResponse(
            smart_configuration(self.config), headers={"Cache-Control": "max-age=300"}
        )

    async def openid_discovery(self) -> Response:
        return JSONResponse(
            openid_configuration(self.config, self.signing_alg),
            headers={"Cache-Control": "max-age=300"},
        )

    async def authorize(self, request: Request) -> Response:
        form, params = await _form_or_query(request)
        if not _same_origin(request, self.config.issuer):
            # a form posted from another site: it could sign the browser in to an
            # account of the other site's choosing (login CSRF) or answer its consent
            refusal = "the form was not sent from this server's pages"
            self._record("authorize", 403, refusal, params.get("client_id"), request)
            return pages.error_page(refusal, 403)
        try:
            checked = await self.flow.check(params, _address(request))
            return await self._step(checked, form, self.sessions.cookie(request.cookies))
        except PageError as exc:
            self._record("authorize", 400, str(exc), params.get("client_id"), request)
            return pages.error_page(str(exc))
        except RedirectError as exc:
            refusal = f"{exc.error.error}: {exc.error.description}"
            self._record("authorize", exc.error.status, refusal, params.get("client_id"), request)
            return exc.response()

    async def _step(self, checked: Checked, form: FormData, cookie: str | None) -> Response:
        step = form.get("step")
        if step == "login":
            return await self.flow.login(checked, _strings(form), cookie)
        if step == "consent":
            grants = [str(g) for g in form.getlist("grant")]
            return await self.flow.consent(checked, _strings(form), grants)
        return await self.flow.start(checked, cookie)

    async def end_session(self, request: Request) -> Response:
        """Sign the browser out: its sign-in session ends even when the request is
        refused (only the way back to the app is refused then: the user asked to sign
        out, and on a shared workstation must be)."""
        assert self.logout is not None  # the route exists only with it
        _, params = await _form_or_query(request)
        ended = await self.sessions.end(self.sessions.cookie(request.cookies))
        user = ended.user_id if ended is not None else None
        session = "; sign-in session ended" if ended else ""
        try:
            out = await self.logout.check(params)
        except LogoutRefused as exc:
            what = f"{exc}{session}"
            _audit(
                self.audit, "logout", 400, what, user, params.get("client_id"), _address(request)
            )
            response: Response = pages.error_page(f"{exc}. You are signed out of radhub.")
        else:
            what = f"signed out{session}"
            _audit(self.audit, "logout", 200, what, user, out.client_id, _address(request))
            if out.redirect_uri is None:
                response = pages.signed_out_page()
            else:
                response = redirect(out.redirect_uri, {"state": out.state} if out.state else {})
        self.sessions.clear_cookie(response)
        return response

    async def token(self, request: Request) -> Response:
        form = _strings(await request.form(**FORM_LIMITS))
        client_id = form.get("client_id")
        try:
            client = await self.clients.authenticate(form, request.headers.get("authorization"))
            client_id = client.client_id
            body = await self.grants.exchange(client, form)
        except OAuthError as exc:
            return self._refused("token", exc, client_id, request)
        self._record("token", 200, f"{form.get('grant_type')} granted", client_id, request)
        return JSONResponse(body, headers=NO_STORE)

    async def introspect(self, request: Request) -> Response:
        form = _strings(await request.form(**FORM_LIMITS))
        try:
            client = await self.clients.authenticate(form, request.headers.get("authorization"))
            if client.kind == "public":
                raise InvalidClient("introspection needs a confidential client")
        except OAuthError as exc:
            return self._refused("introspect", exc, form.get("client_id"), request)
        answer = await self.introspection.introspect(form.get("token", ""))
        return JSONResponse(answer, headers=NO_STORE)

    async def revoke(self, request: Request) -> Response:
        form = _strings(await request.form(**FORM_LIMITS))
        try:
            client = await self.clients.authenticate(form, request.headers.get("authorization"))
        except OAuthError as exc:
            return self._refused("revoke", exc, form.get("client_id"), request)
        await self.introspection.revoke(client, form.get("token", ""))
        self._record("revoke", 200, "token revoked", client.client_id, request)
        return Response(status_code=200, headers=NO_STORE)

    async def launch(self, request: Request) -> Response:
        """Mint a launch for an EHR: an admin user's token that grants ``user/``
        Patient reads (the role alone would let any app an admin signs in to mint
        launches), or a ``system/`` Patient reader (the EHR as a backend client)."""
        try:
            ctx = await self.verifier.verify(bearer_token(request.headers.get("authorization")))
            admin = "admin" in ctx.roles and _reader(ctx.scopes, "user")
            if not admin and not _reader(ctx.scopes, "system"):
                raise Forbidden(
                    "minting a launch needs an admin's user/Patient.r or a system/Patient.r token"
                )
        except FhirError as exc:
            self._record("launch", exc.status, exc.diagnostics, None, request)
            raise
        form = _strings(await request.form(**FORM_LIMITS))
        if not form.get("client_id") or not form.get("patient"):
            required = OAuthError("client_id and patient are required")
            return self._refused("launch", required, ctx.client_id, request)
        try:
            value = await self.launches.mint(
                form["client_id"], form["patient"], form.get("encounter")
            )
        except UnknownClient as exc:
            return self._refused("launch", OAuthError(str(exc)), ctx.client_id, request)
        what = f"launch minted for client {form['client_id']}"
        self.audit.record(
            AuditRecord(
                "launch",
                200,
                utc_now(),
                ctx,
                resource_type="Patient",
                resource_id=form["patient"],
                address=_address(request),
                description=what,
            )
        )
        return JSONResponse({"launch": value}, headers=NO_STORE)

    def _refused(
        self, event: str, exc: OAuthError, client: str | None, request: Request
    ) -> Response:
        """Audit an OAuth refusal and answer it (RFC 6749 §5.2)."""
        self._record(event, exc.status, f"{exc.error}: {exc.description}", client, request)
        return exc.response()

    def _record(
        self, event: str, status: int, description: str, client: str | None, request: Request
    ) -> None:
        _audit(self.audit, event, status, description, None, client, _address(request))


def _get_and_post(
    router: APIRouter, path: str, endpoint: Callable[..., Any], name: str, summary: str
) -> None:
    """One route per method: distinct OpenAPI operation ids."""
    for method in ("GET", "POST"):
        router.add_api_route(
            path, endpoint, methods=[method], name=f"{name}_{method.lower()}", summary=summary
        )


async def _form_or_query(request: Request) -> tuple[FormData, Mapping[str, str]]:
    """A browser's parameters: the form of a POST, else the query of a GET."""
    form = await request.form(**FORM_LIMITS) if request.method == "POST" else FormData()
    params: Mapping[str, str] = _strings(form) if form else dict(request.query_params)
    return form, params


def _same_origin(request: Request, issuer: str) -> bool:
    """Whether a browser's POST came from a page of this server: by Fetch Metadata's
    ``Sec-Fetch-Site`` where the browser sends it, else by ``Origin`` naming the host the
    request was sent to, or the issuer's origin (a proxy may have rewritten ``Host``). A
    request with neither (not a browser's form) passes; an opaque origin (``null``)
    does not."""
    if request.method != "POST":
        return True
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site == "same-origin"
    origin = request.headers.get("origin")
    if origin is None:
        return True
    sent, ours = urlsplit(origin), urlsplit(issuer)
    if sent.netloc.lower() == request.headers.get("host", "").lower():
        return True
    return (sent.scheme, sent.netloc.lower()) == (ours.scheme, ours.netloc.lower())


def _address(request: Request) -> str | None:
    return request.client.host if request.client else None


def _reader(scopes: ScopeSet, level: str) -> bool:
    """Whether ``scopes`` grant reading Patients at ``level`` (user or system)."""
    return any(s.level == level for s in scopes.granting("Patient", "r"))


def _strings(form: FormData | Mapping[str, Any]) -> dict[str, str]:
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _audit(
    sink: AuditSink,
    event: str,
    status: int,
    description: str,
    user: str | None,
    client: str | None,
    address: str | None = None,
) -> None:
    who = AuthContext(subject=user or client or "anonymous", client_id=client, scopes=ScopeSet())
    sink.record(
        AuditRecord(
            interaction=event,
            status=status,
            moment=utc_now(),
            auth=who,
            address=address,
            description=description,
        )
    )
