"""User accounts: fastapi-users over the store's auth data, with lock-out.

``UserDatabase`` is fastapi-users' ``BaseUserDatabase`` over ``AuthData``, so
its ``BaseUserManager`` (and its routers, should we mount them) work on our
store. ``Accounts`` is what the login page and ``radhub user add`` use:
create a user with an Argon2id hash and a role, and log in, locking an
account for ``lockout_seconds`` after ``max_failed_logins`` failures in a row.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fastapi_users.db import BaseUserDatabase
from fastapi_users.manager import BaseUserManager
from fastapi_users.password import PasswordHelper

from fhir_server.access.roles import ROLES
from fhir_server.storage.auth_port import AuthData, AuthRecordExists, UserRecord
from smart.secrets import hash_secret, password_helper, verify_secret

Clock = Callable[[], float]


class UserDatabase(BaseUserDatabase[UserRecord, str]):
    """fastapi-users' database adapter over ``AuthData`` (login name in ``email``)."""

    def __init__(self, auth: AuthData) -> None:
        self._auth = auth

    async def get(self, id: str) -> UserRecord | None:
        return await self._auth.get_user(id)

    async def get_by_email(self, email: str) -> UserRecord | None:
        return await self._auth.get_user_by_name(email)

    async def create(self, create_dict: dict[str, Any]) -> UserRecord:
        user = UserRecord(id=str(create_dict.pop("id", uuid.uuid4())), **create_dict)
        await self._auth.add_user(user)
        return user

    async def update(self, user: UserRecord, update_dict: dict[str, Any]) -> UserRecord:
        updated = await self._auth.update_user(user.id, update_dict)
        if updated is None:
            raise LookupError(f"user {user.id} is gone")
        return updated

    async def delete(self, user: UserRecord) -> None:
        await self._auth.delete_user(user.id)


class UserManager(BaseUserManager[UserRecord, str]):
    """fastapi-users' manager for our users; ids are opaque strings."""

    def parse_id(self, value: Any) -> str:
        return str(value)


class LockedOut(Exception):
    """Too many failed logins: the account is locked until ``until``."""

    def __init__(self, until: float) -> None:
        super().__init__("account temporarily locked")
        self.until = until


@dataclass(frozen=True, slots=True)
class LoginPolicy:
    max_failures: int = 5
    lockout_seconds: int = 900


USERNAME_RULE = "a user name is printable text without surrounding spaces"


def is_username(name: str) -> bool:
    """A name a user can type at the login page and an admin can read in the audit
    trail: not empty, no control characters (a NUL was accepted), no outer spaces."""
    return bool(name) and name.isprintable() and name == name.strip()


class Accounts:
    """Creating users and checking their passwords."""

    def __init__(
        self,
        auth: AuthData,
        *,
        helper: PasswordHelper | None = None,
        policy: LoginPolicy = LoginPolicy(),
        clock: Clock = time.time,
    ) -> None:
        self._helper = helper or password_helper()
        self.manager = UserManager(UserDatabase(auth), self._helper)
        self._policy = policy
        self._clock = clock

    async def add(
        self,
        username: str,
        password: str,
        roles: Iterable[str],
        fhir_user: str | None = None,
    ) -> UserRecord:
        """Create a user; raises ValueError for an unknown role, a taken name or one
        that ``is_username`` refuses."""
        if not is_username(username):
            raise ValueError(f"{USERNAME_RULE}: {username!r}")
        role_list = tuple(sorted(set(roles)))
        unknown = [r for r in role_list if r not in ROLES]
        if unknown or not role_list:
            raise ValueError(f"unknown role(s) {unknown}; use one of {sorted(ROLES)}")
        if "patient" in role_list and not (fhir_user or "").startswith("Patient/"):
            raise ValueError("a patient user needs --fhir-user Patient/ID")
        hashed = await hash_secret(self._helper, password)
        fields: dict[str, Any] = {"email": username, "hashed_password": hashed}
        fields |= {"roles": role_list, "fhir_user": fhir_user, "is_superuser": "admin" in role_list}
        try:
            return await self.manager.user_db.create(fields)
        except AuthRecordExists as exc:
            raise ValueError(f"user {username!r} already exists") from exc

    async def login(self, username: str, password: str) -> UserRecord | None:
        """The user if the password is right; None otherwise. Raises LockedOut."""
        user = await self.manager.user_db.get_by_email(username)
        if user is None:
            await hash_secret(self._helper, password)  # same time as a wrong password
            return None
        now = self._clock()
        if user.locked_until > now:
            raise LockedOut(user.locked_until)
        if user.is_active and await verify_secret(self._helper, password, user.hashed_password):
            if user.failed_logins:
                await self.manager.user_db.update(user, {"failed_logins": 0, "locked_until": 0.0})
            return user
        await self._failed(user, now)
        return None

    async def _failed(self, user: UserRecord, now: float) -> None:
        failures = user.failed_logins + 1
        changes: dict[str, Any] = {"failed_logins": failures}
        if failures >= self._policy.max_failures:
            changes = {"failed_logins": 0, "locked_until": now + self._policy.lockout_seconds}
        await self.manager.user_db.update(user, changes)
        if "locked_until" in changes:
            raise LockedOut(changes["locked_until"])
