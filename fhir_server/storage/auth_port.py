"""The auth data port: what the SMART authorisation server keeps in the store.

Clients, user accounts, authorization codes, refresh tokens (with their grant
family, for rotation and family revocation), launch contexts, sign-in sessions,
client-assertion ``jti``s already used, and revoked access tokens. Both adapters
(SQLite, MongoDB) implement ``AuthData`` and pass one contract suite.

The store never sees a secret in clear: codes, refresh tokens, launch values and
sign-in session cookies arrive already hashed (the caller decides how), passwords
and client secrets as password hashes. Every record that can expire carries
``expires_at`` (seconds since the epoch) and ``purge`` drops the stale ones.

Redemption is atomic: ``take_code`` and ``take_refresh`` mark the record used
and tell the caller whether this was the first use, so two concurrent
redemptions cannot both win, and a replay is seen as one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Literal, Protocol, TypeVar

ClientKind = Literal["public", "symmetric", "asymmetric"]

T = TypeVar("T")


class AuthRecordExists(ValueError):
    """A record with this key (client id, user name, jti) already exists."""


@dataclass(frozen=True, slots=True)
class ClientRecord:
    """A registered OAuth client. ``scope`` is the most it may ask for ("" = anything);
    ``jwks`` is a JWK Set (JSON text) for ``private_key_jwt`` clients."""

    client_id: str
    kind: ClientKind
    redirect_uris: tuple[str, ...] = ()
    scope: str = ""
    secret_hash: str | None = None
    jwks: str | None = None
    jwks_uri: str | None = None
    name: str = ""
    # where the end-session endpoint may send the user back (RP-Initiated Logout §3.1)
    post_logout_redirect_uris: tuple[str, ...] = ()


@dataclass(slots=True)
class UserRecord:
    """A user account, shaped for fastapi-users' ``UserProtocol`` (hence mutable).

    ``email`` is the login name (fastapi-users' name for it; it need not be an
    address). ``fhir_user`` is a relative reference (``Practitioner/1``).
    """

    id: str
    email: str
    hashed_password: str
    roles: tuple[str, ...] = ()
    fhir_user: str | None = None
    is_active: bool = True
    is_superuser: bool = False
    is_verified: bool = True
    failed_logins: int = 0
    locked_until: float = 0.0


@dataclass(frozen=True, slots=True)
class GrantInfo:
    """What a user (or system) granted a client: shared by a code and the tokens it
    leads to. ``grant_id`` names the family revoked as a whole."""

    grant_id: str
    client_id: str
    subject: str
    scope: str
    patient: str | None = None
    encounter: str | None = None
    fhir_user: str | None = None
    roles: tuple[str, ...] = ()
    auth_time: float = 0.0
    launched: bool = False  # from an EHR launch (the EHR shows the patient banner)


@dataclass(frozen=True, slots=True)
class AuthorizationCode:
    """An issued authorization code (RFC 6749 §4.1.2), keyed by its hash."""

    code_hash: str
    grant: GrantInfo
    redirect_uri: str
    code_challenge: str
    expires_at: float
    nonce: str | None = None


@dataclass(frozen=True, slots=True)
class RefreshToken:
    """An issued refresh token, keyed by its hash; ``used`` once rotated."""

    token_hash: str
    grant: GrantInfo
    expires_at: float
    used: bool = False
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class LaunchContext:
    """An EHR launch value's context: bound to one client and one patient."""

    launch_id: str
    client_id: str
    patient: str
    expires_at: float
    encounter: str | None = None


@dataclass(frozen=True, slots=True)
class Consent:
    """What a user decided for one client in a sign-in session: the scopes the consent
    page offered, those granted, and the patient picked (if one was to be picked)."""

    client_id: str
    offered: tuple[str, ...]
    granted: tuple[str, ...]
    patient: str | None = None


@dataclass(frozen=True, slots=True)
class SignInSession:
    """A browser's sign-in at the authorization server, keyed by its cookie's hash.

    ``expires_at`` is the idle limit (moved on with each use), never later than
    ``ends_at``, the absolute one. ``account_stamp`` tells whether the account (its
    password, roles, fhirUser) has changed since the sign-in (then the session no
    longer counts)."""

    session_hash: str
    user_id: str
    auth_time: float
    expires_at: float
    ends_at: float
    consents: tuple[Consent, ...] = ()
    account_stamp: str = ""


@dataclass(frozen=True, slots=True)
class Redemption:
    """A code or refresh token taken from the store, and whether this was its first use."""

    first_use: bool
    code: AuthorizationCode | None = None
    refresh: RefreshToken | None = field(default=None)


class AuthData(Protocol):
    """The auth sub-store. See the module docstring."""

    async def put_client(self, client: ClientRecord) -> None:
        """Register or replace a client."""

    async def get_client(self, client_id: str) -> ClientRecord | None: ...

    async def delete_client(self, client_id: str) -> bool: ...

    async def list_clients(self) -> list[ClientRecord]:
        """Every registered client, ordered by client id (the admin API lists them)."""

    async def add_user(self, user: UserRecord) -> None:
        """Create a user; raises AuthRecordExists if the id or login name is taken."""

    async def get_user(self, user_id: str) -> UserRecord | None: ...

    async def get_user_by_name(self, name: str) -> UserRecord | None:
        """The user with this login name (case-insensitive)."""

    async def update_user(self, user_id: str, changes: Mapping[str, Any]) -> UserRecord | None:
        """Apply ``changes`` (field → value) and return the updated user."""

    async def delete_user(self, user_id: str) -> None: ...

    async def list_users(self) -> list[UserRecord]:
        """Every user account, ordered by login name (the admin API lists them)."""

    async def put_code(self, code: AuthorizationCode) -> None: ...

    async def take_code(self, code_hash: str) -> Redemption | None:
        """Mark the code used; None if unknown."""

    async def put_refresh(self, token: RefreshToken) -> None: ...

    async def take_refresh(self, token_hash: str) -> Redemption | None:
        """Mark the refresh token used (rotated); None if unknown."""

    async def get_refresh(self, token_hash: str) -> RefreshToken | None: ...

    async def record_issued(self, jti: str, grant_id: str, expires_at: float) -> None:
        """Remember an access token of a grant, so revoking the grant reaches it."""

    async def revoke_grant(self, grant_id: str) -> None:
        """Revoke a whole family: its refresh tokens and the access tokens it issued."""

    async def revoke_jti(self, jti: str, expires_at: float) -> None:
        """Revoke one access token until it would have expired anyway."""

    async def is_revoked(self, jti: str) -> bool: ...

    @property
    def revocations(self) -> int:
        """How many revocations went through this object (callers caching
        ``is_revoked`` verdicts forget them when it changes)."""

    async def put_launch(self, launch: LaunchContext) -> None: ...

    async def get_launch(self, launch_id: str) -> LaunchContext | None: ...

    async def put_session(self, session: SignInSession) -> None:
        """Create or replace a sign-in session."""

    async def get_session(self, session_hash: str) -> SignInSession | None: ...

    async def update_session(self, session_hash: str, changes: Mapping[str, Any]) -> bool:
        """Set fields of a session (``expires_at``, ``consents``) in one atomic step;
        False, and nothing written, if it no longer exists (a sign-out is never undone)."""

    async def delete_session(self, session_hash: str) -> None: ...

    async def list_sessions(self, user_id: str) -> list[SignInSession]:
        """A user's sessions, expired ones included, oldest sign-in first."""

    async def delete_sessions(self, user_id: str) -> int:
        """End every session of a user; returns how many there were."""

    async def use_jti(self, key: str, expires_at: float) -> bool:
        """Record a one-time ``jti``; False if it was seen before (a replay)."""

    async def purge(self, now: float) -> int:
        """Drop expired codes, tokens, launches, sessions and jtis; returns how many."""


# -- one codec for both adapters: records <-> JSON-able dicts ---------------------


def to_doc(record: Any) -> dict[str, Any]:
    """A record as a JSON-able dict (tuples become lists)."""
    doc: dict[str, Any] = asdict(record)
    return doc


def to_doc_fields(changes: Mapping[str, Any]) -> dict[str, Any]:
    """Field changes as JSON-able values (records within them as dicts, tuples as lists)."""
    return {name: _as_json(value) for name, value in changes.items()}


def _as_json(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, tuple | list):
        return [_as_json(item) for item in value]
    return value


def from_doc(cls: type[T], doc: Mapping[str, Any]) -> T:
    """Rebuild a record from ``to_doc`` output; unknown keys (``_id``...) are ignored."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    values = {k: _restore(k, v) for k, v in doc.items() if k in names}
    return cls(**values)


def _restore(name: str, value: Any) -> Any:
    if name == "grant" and isinstance(value, Mapping):
        return from_doc(GrantInfo, value)
    if name == "consents" and isinstance(value, list):
        return tuple(from_doc(Consent, item) for item in value)
    if isinstance(value, list):
        return tuple(value)
    return value
