"""The admin API for OAuth clients and user accounts, beside ``radhub client add``
and ``radhub user add`` and over the same store port:

    GET    /auth/admin/clients                   list the registered clients
    POST   /auth/admin/clients                   register one (RFC 7591 metadata) → 201
    GET    /auth/admin/clients/{client_id}       one registration
    PUT    /auth/admin/clients/{client_id}       replace its metadata (not its auth method)
    POST   /auth/admin/clients/{client_id}/secret   a new secret; the old one stops working
    DELETE /auth/admin/clients/{client_id}       → 204
    GET    /auth/admin/users                     list the user accounts
    POST   /auth/admin/users                     create one → 201
    GET    /auth/admin/users/{user_id}           one account
    PATCH  /auth/admin/users/{user_id}           roles, fhirUser, active, password, unlock
    DELETE /auth/admin/users/{user_id}           → 204
    GET    /auth/admin/users/{user_id}/sessions  the user's live sign-in sessions
    DELETE /auth/admin/users/{user_id}/sessions  sign the user out everywhere → 200
    DELETE /auth/admin/users/{user_id}/sessions/{session_id}   end one → 204

Who may call: a bearer token of a user holding the ``admin`` role *and*
granted ``user/*.cruds`` (or v1 ``user/*.*``). The role alone is not enough:
any SMART app an administrator signs in to carries the role, and should not
be able to create accounts unless the administrator granted it everything.

A sign-in session is the browser's at the authorization server (``smart.sessions``):
ending it makes that browser's next trip through ``/auth/authorize`` ask for the
password (a workstation left signed in, a badge reported lost). It does not revoke
tokens already issued to apps; revoke those at ``/auth/revoke``, or deactivate the
account. Deactivating, deleting, or changing an account's password, roles or fhirUser
ends its sessions here at once.

Secrets: a client secret is generated here (256 bits), returned once in the
201 (or the rotation) response with ``Cache-Control: no-store``, and stored
as an Argon2id hash; passwords are stored the same way. Neither is ever
returned again, logged, or written to the audit trail. Every call, allowed
or refused, is audited (``fhir_server.audit``: DCM 110113 Security Alert).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

from fastapi import APIRouter
from fastapi_users.password import PasswordHelper
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from fhir_server.access import AuthContext, TokenVerifier, bearer_challenge, bearer_token
from fhir_server.audit import AuditRecord
from fhir_server.errors import FhirError, Forbidden
from fhir_server.interactions.services import utc_now
from fhir_server.storage.auth_port import AuthData, ClientRecord, SignInSession, UserRecord
from smart.admin_models import (
    AlreadyExists,
    InvalidClientMetadata,
    NotFound,
    client_from_metadata,
    client_view,
    new_user,
    session_view,
    user_changes,
    user_view,
)
from smart.errors import NO_STORE, OAuthError
from smart.secrets import hash_secret, new_token
from smart.sessions import account_stamp, signs_in
from smart.users import Accounts

PREFIX = "/auth/admin"
T = TypeVar("T")
Audit = Callable[[AuditRecord], None]
Handler = Callable[[Request, AuthContext], Awaitable[tuple[Response, str]]]


def is_admin(ctx: AuthContext) -> bool:
    """An admin user's token granted everything at user level (module docstring)."""
    if "admin" not in ctx.roles:
        return False
    full = frozenset("cruds")
    return any(
        s.level == "user"
        and s.resource_type == "*"
        and s.permissions == full
        and not s.constraints  # user/*.cruds?category=x is not everything
        for s in ctx.scopes.resources
    )


class AdminApi:
    """The routes; each one authorises, runs, and audits."""

    def __init__(
        self,
        auth: AuthData,
        accounts: Accounts,
        helper: PasswordHelper,
        verifier: TokenVerifier,
        audit: Audit,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._auth = auth
        self._accounts = accounts
        self._helper = helper
        self._verifier = verifier
        self._audit = audit
        self._clock = clock

    def router(self) -> APIRouter:
        router = APIRouter(prefix=PREFIX, tags=["auth admin"])
        routes: list[tuple[str, str, str, Handler]] = [
            ("/clients", "GET", "admin-read", self.list_clients),
            ("/clients", "POST", "admin-client-create", self.create_client),
            ("/clients/{client_id}", "GET", "admin-read", self.read_client),
            ("/clients/{client_id}", "PUT", "admin-client-update", self.update_client),
            ("/clients/{client_id}/secret", "POST", "admin-client-update", self.new_secret),
            ("/clients/{client_id}", "DELETE", "admin-client-delete", self.delete_client),
            ("/users", "GET", "admin-read", self.list_users),
            ("/users", "POST", "admin-user-create", self.create_user),
            ("/users/{user_id}", "GET", "admin-read", self.read_user),
            ("/users/{user_id}", "PATCH", "admin-user-update", self.update_user),
            ("/users/{user_id}", "DELETE", "admin-user-delete", self.delete_user),
            ("/users/{user_id}/sessions", "GET", "admin-read", self.list_sessions),
            ("/users/{user_id}/sessions", "DELETE", "admin-sessions-end", self.end_sessions),
            (
                "/users/{user_id}/sessions/{session_id}",
                "DELETE",
                "admin-sessions-end",
                self.end_session,
            ),
        ]
        for path, method, event, handler in routes:
            router.add_api_route(
                path,
                self._endpoint(event, handler),
                methods=[method],
                name=handler.__name__,
                summary=(handler.__doc__ or "").strip().split("\n")[0],
            )
        return router

    def _endpoint(self, event: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            ctx: AuthContext | None = None
            try:
                ctx = await self._verifier.verify(
                    bearer_token(request.headers.get("authorization"))
                )
                if not is_admin(ctx):
                    raise Forbidden(
                        "the admin API needs an admin user's token granted user/*.cruds",
                        headers={"WWW-Authenticate": bearer_challenge(error="insufficient_scope")},
                    )
                response, what = await handler(request, ctx)
            except FhirError as exc:
                self._record(event, exc.status, exc.diagnostics, ctx, request)
                raise
            except OAuthError as exc:
                self._record(event, exc.status, f"{exc.error}: {exc.description}", ctx, request)
                return exc.response()
            self._record(event, response.status_code, what, ctx, request)
            return response

        return endpoint

    def _record(
        self, event: str, status: int, what: str, ctx: AuthContext | None, request: Request
    ) -> None:
        address = request.client.host if request.client else None
        record = AuditRecord(event, status, utc_now(), ctx, address=address, description=what)
        self._audit(record)

    # -- clients ----------------------------------------------------------------------

    async def list_clients(self, request: Request, ctx: AuthContext) -> tuple[Response, str]:
        """List the registered clients"""
        clients = await self._auth.list_clients()
        return JSONResponse([client_view(c) for c in clients]), "clients listed"

    async def read_client(self, request: Request, ctx: AuthContext) -> tuple[Response, str]:
        """Read a client's registration"""
        client = await self._client(request.path_params["client_id"])
        return JSONResponse(client_view(client)), f"client {client.client_id} read"

    async def create_client(self, request: Request, ctx: AuthContext) -> tuple[Response, str]:
        """Register a client (RFC 7591 metadata); its secret is shown once"""
        body = await _json(request)
        client_id = body.get("client_id") if isinstance(body, dict) else None
        client = client_from_metadata(body, client_id or uuid.uuid4().hex)
        if await self._auth.get_client(client.client_id) is not None:
            raise AlreadyExists(f"client {client.client_id!r} already exists")
        return await self._store_client(client, 201), f"client {client.client_id} registered"

    async def update_client(self, request: Request, ctx: AuthContext) -> tuple[Response, str]:
        """Replace a client's metadata (its authentication method stays)"""
        old = await self._client(request.path_params["client_id"])
        client = client_from_metadata(
            await _json(request), old.client_id, secret_hash=old.secret_hash
        )
        if client.kind != old.kind:
            raise InvalidClientMetadata("the authentication method cannot change; re-register")
        await self._auth.put_client(client)
        return JSONResponse(client_view(client)), f"client {client.client_id} updated"

    async def new_secret(self, request: Request, ctx: AuthContext) -> tuple[Response, str]:
        """Give a confidential symmetric client a new secret (shown once)"""
        client = await self._client(request.path_params["client_id"])
        if client.kind != "symmetric":
            raise InvalidClientMetadata("only client_secret clients have a secret")
        response = await self._store_client(client, 200)
        return response, f"client {client.client_id}: secret replaced"

    async def delete_client(self, request: Request, ctx: AuthContext) -> tuple[Response, str]:
        """Delete a client"""
        client_id = request.path_params["client_id"]
        if not await self._auth.delete_client(client_id):
            raise NotFound(f"no client {client_id!r}")
        return Response(status_code=204), f"client {client_id} deleted"

    async def _client(self, client_id: str) -> ClientRecord:
        return _found(await self._auth.get_client(client_id), f"client {client_id!r}")

    async def _store_client(self, client: ClientRecord, status: int) -> Response:
        """Store ``client``, with a fresh secret if it is symmetric, and show it once."""
        view = client_view(client)
        if client.kind == "symmetric":
            secret = new_token()
            client = replace(client, secret_hash=await hash_secret(self._helper, secret))
            view["client_secret"] = secret
            view["client_secret_expires_at"] = 0  # RFC 7591 §3.2.1: does not expire
        await self._auth.put_client(client)
        return JSONResponse(view, status_code=status, headers=NO_STORE)

    # -- users ------------------------------------------------------------------------

    async def list_users(self, request: Request, ctx: AuthContext) -> tuple[Response, str]:
        """List the user accounts"""
        now = self._clock()
        users = await self._auth.list_users()
        return JSONResponse([user_view(u, now) for u in users]), "users listed"

    async def read_user(self, request: Request, ctx: AuthContext) -> tuple[Response, str]:
        """Read a user account"""
        user = await self._user(request.path_params["user_id"])
        return JSONResponse(user_view(user, self._clock())), f"user {user.id} read"

    async def create_user(self, request: Request, ctx: AuthContext) -> tuple[Response, str]:
        """Create a user account"""
        wanted = new_user(await _json(request))
        try:
            user = await self._accounts.add(
                wanted.username, wanted.password, wanted.roles, wanted.fhir_user
            )
        except ValueError as exc:
            raise AlreadyExists(str(exc)) from exc
        body = user_view(user, self._clock())
        headers = {"Location": f"{PREFIX}/users/{user.id}"}
        return JSONResponse(body, status_code=201, headers=headers), f"user {user.id} created"

    async def update_user(self, request: Request, ctx: AuthContext) -> tuple[Response, str]:
        """Change a user's roles, fhirUser, active flag or password, or unlock it"""
        user = await self._user(request.path_params["user_id"])
        changes, password = user_changes(await _json(request), user)
        if password is not None:
            changes["hashed_password"] = await hash_secret(self._helper, password)
        updated = await self._auth.update_user(user.id, changes) if changes else user
        if updated is None:
            raise NotFound(f"no user {user.id!r}")
        what = f"user {user.id}: {', '.join(sorted(changes)) or 'nothing'} changed"
        if not updated.is_active or account_stamp(updated) != account_stamp(user):
            ended = await self._auth.delete_sessions(user.id)
            what += f"; {_sessions(ended)} ended"
        return JSONResponse(user_view(updated, self._clock())), what

    async def delete_user(self, request: Request, ctx: AuthContext) -> tuple[Response, str]:
        """Delete a user account (its sign-in sessions end with it)"""
        user = await self._user(request.path_params["user_id"])
        await self._auth.delete_user(user.id)
        ended = await self._auth.delete_sessions(user.id)
        return Response(status_code=204), f"user {user.id} deleted; {_sessions(ended)} ended"

    # -- sign-in sessions ---------------------------------------------------------------

    async def list_sessions(self, request: Request, ctx: AuthContext) -> tuple[Response, str]:
        """List a user's live sign-in sessions"""
        user, live = await self._live_sessions(request.path_params["user_id"])
        body = [session_view(s) for s in live]
        return JSONResponse(body), f"user {user.id}: {_sessions(len(live))} listed"

    async def end_sessions(self, request: Request, ctx: AuthContext) -> tuple[Response, str]:
        """Sign a user out everywhere: end all of their sign-in sessions"""
        user = await self._user(request.path_params["user_id"])
        ended = await self._auth.delete_sessions(user.id)
        return JSONResponse({"ended": ended}), f"user {user.id}: {_sessions(ended)} ended"

    async def end_session(self, request: Request, ctx: AuthContext) -> tuple[Response, str]:
        """End one of a user's sign-in sessions"""
        session_id = request.path_params["session_id"]
        user, live = await self._live_sessions(request.path_params["user_id"])
        session = next((s for s in live if session_view(s)["id"] == session_id), None)
        if session is None:
            raise NotFound(f"no live sign-in session {session_id!r} of user {user.id!r}")
        await self._auth.delete_session(session.session_hash)
        return Response(status_code=204), f"user {user.id}: sign-in session {session_id} ended"

    async def _live_sessions(self, user_id: str) -> tuple[UserRecord, list[SignInSession]]:
        """The user, and those of their sessions that still sign them in (an expired
        one, or one from before an account change, no longer does)."""
        user = await self._user(user_id)
        now = self._clock()
        sessions = await self._auth.list_sessions(user.id)
        live = [s for s in sessions if signs_in(s, user, now)]
        return user, live

    async def _user(self, user_id: str) -> UserRecord:
        return _found(await self._auth.get_user(user_id), f"user {user_id!r}")


def _sessions(count: int) -> str:
    return f"{count} sign-in session{'' if count == 1 else 's'}"


def _found(record: T | None, what: str) -> T:
    if record is None:
        raise NotFound(f"no {what}")
    return record


async def _json(request: Request) -> Any:
    try:
        body = await request.json()
        # a lone surrogate (JSON \ud800) parses but can be neither stored nor sent back
        json.dumps(body, ensure_ascii=False).encode()
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise OAuthError("the body is not JSON in UTF-8, or it nests too deeply") from exc
    return body
