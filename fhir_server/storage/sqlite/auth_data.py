"""The auth data sub-store on SQLite (see ``fhir_server.storage.auth_port``).

Records live as JSON in ``data`` columns beside the few columns queried or
updated atomically (keys, expiry, used/revoked flags). Reads go through the
store's reader threads, writes through its single writer, each write one
statement or one explicit transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Protocol, TypeVar

from fhir_server.storage.auth_port import (
    AuthorizationCode,
    AuthRecordExists,
    ClientRecord,
    LaunchContext,
    Redemption,
    RefreshToken,
    SignInSession,
    UserRecord,
    from_doc,
    to_doc,
    to_doc_fields,
)

T = TypeVar("T")

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS auth_clients(client_id TEXT PRIMARY KEY, data TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS auth_users(
        id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE COLLATE NOCASE, data TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS auth_codes(
        code_hash TEXT PRIMARY KEY, data TEXT NOT NULL, expires_at REAL NOT NULL,
        used INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS auth_refresh(
        token_hash TEXT PRIMARY KEY, grant_id TEXT NOT NULL, data TEXT NOT NULL,
        expires_at REAL NOT NULL, used INTEGER NOT NULL DEFAULT 0,
        revoked INTEGER NOT NULL DEFAULT 0)""",
    "CREATE INDEX IF NOT EXISTS auth_refresh_grant ON auth_refresh(grant_id)",
    """CREATE TABLE IF NOT EXISTS auth_issued(
        jti TEXT PRIMARY KEY, grant_id TEXT NOT NULL, expires_at REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS auth_issued_grant ON auth_issued(grant_id)",
    "CREATE TABLE IF NOT EXISTS auth_revoked(jti TEXT PRIMARY KEY, expires_at REAL NOT NULL)",
    """CREATE TABLE IF NOT EXISTS auth_launch(
        launch_id TEXT PRIMARY KEY, data TEXT NOT NULL, expires_at REAL NOT NULL)""",
    "CREATE TABLE IF NOT EXISTS auth_jti(key TEXT PRIMARY KEY, expires_at REAL NOT NULL)",
    """CREATE TABLE IF NOT EXISTS auth_sessions(
        session_hash TEXT PRIMARY KEY, data TEXT NOT NULL, expires_at REAL NOT NULL)""",
    # the admin API lists and ends a user's sessions
    """CREATE INDEX IF NOT EXISTS auth_sessions_user
        ON auth_sessions(json_extract(data, '$.user_id'))""",
)

_EXPIRING = (
    "auth_codes",
    "auth_refresh",
    "auth_issued",
    "auth_revoked",
    "auth_launch",
    "auth_jti",
    "auth_sessions",
)


class Runner(Protocol):
    """The part of ``SqliteStore`` a sub-store uses."""

    async def run_read(self, fn: Callable[..., T], *args: Any) -> T: ...

    async def run_write(self, fn: Callable[..., T], *args: Any) -> T: ...


def create_auth_schema(conn: sqlite3.Connection) -> None:
    """Create the auth tables (idempotent); run by the store at start."""
    for statement in SCHEMA:
        conn.execute(statement)


def _dumps(record: Any) -> str:
    return json.dumps(to_doc(record), separators=(",", ":"))


def _one(conn: sqlite3.Connection, sql: str, *args: Any) -> Any:
    row = conn.execute(sql, args).fetchone()
    return None if row is None else row[0]


def _rows(conn: sqlite3.Connection, sql: str, *args: Any) -> list[Any]:
    return [row[0] for row in conn.execute(sql, args)]


def _execute(conn: sqlite3.Connection, sql: str, *args: Any) -> int:
    return conn.execute(sql, args).rowcount


def _insert_unique(conn: sqlite3.Connection, sql: str, *args: Any) -> bool:
    try:
        conn.execute(sql, args)
    except sqlite3.IntegrityError:
        return False
    return True


def _take(conn: sqlite3.Connection, table: str, key: str, value: str) -> tuple[str, bool] | None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute(f"SELECT data, used FROM {table} WHERE {key} = ?", (value,)).fetchone()
        if row is not None and not row[1]:
            conn.execute(f"UPDATE {table} SET used = 1 WHERE {key} = ?", (value,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return None if row is None else (row[0], not row[1])


def _update_session(conn: sqlite3.Connection, session_hash: str, changes: str) -> bool:
    # one statement: the row is changed only if it still exists, never written back
    merged = (
        "UPDATE auth_sessions SET data = json_patch(data, ?),"
        " expires_at = coalesce(json_extract(?, '$.expires_at'), expires_at)"
        " WHERE session_hash = ?"
    )
    return conn.execute(merged, (changes, changes, session_hash)).rowcount == 1


def _update_user(conn: sqlite3.Connection, user_id: str, changes: str) -> str | None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        data = _one(conn, "SELECT data FROM auth_users WHERE id = ?", user_id)
        if data is not None:
            merged = {**json.loads(data), **json.loads(changes)}
            data = json.dumps(merged, separators=(",", ":"))
            conn.execute(
                "UPDATE auth_users SET name = ?, data = ? WHERE id = ?",
                (merged["email"], data, user_id),
            )
        conn.execute("COMMIT")
    except sqlite3.IntegrityError as exc:
        conn.execute("ROLLBACK")
        raise AuthRecordExists("that login name is taken") from exc
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return data  # type: ignore[no-any-return]


def _revoke_grant(conn: sqlite3.Connection, grant_id: str) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("UPDATE auth_refresh SET revoked = 1 WHERE grant_id = ?", (grant_id,))
        conn.execute(
            "INSERT OR IGNORE INTO auth_revoked(jti, expires_at) "
            "SELECT jti, expires_at FROM auth_issued WHERE grant_id = ?",
            (grant_id,),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _purge(conn: sqlite3.Connection, now: float) -> int:
    conn.execute("BEGIN IMMEDIATE")
    try:
        count = sum(
            conn.execute(f"DELETE FROM {table} WHERE expires_at < ?", (now,)).rowcount
            for table in _EXPIRING
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return count


def _refresh_row(data: str, used: int, revoked: int) -> RefreshToken:
    token = from_doc(RefreshToken, json.loads(data))
    return replace(token, used=bool(used), revoked=bool(revoked))


class SqliteAuthData:
    """``AuthData`` over the embedded store's connections."""

    def __init__(self, runner: Runner) -> None:
        self._db = runner
        self._revocations = 0

    @property
    def revocations(self) -> int:
        return self._revocations

    # -- clients --------------------------------------------------------------------

    async def put_client(self, client: ClientRecord) -> None:
        sql = "INSERT OR REPLACE INTO auth_clients(client_id, data) VALUES (?, ?)"
        await self._db.run_write(_execute, sql, client.client_id, _dumps(client))

    async def get_client(self, client_id: str) -> ClientRecord | None:
        sql = "SELECT data FROM auth_clients WHERE client_id = ?"
        data = await self._db.run_read(_one, sql, client_id)
        return None if data is None else from_doc(ClientRecord, json.loads(data))

    async def delete_client(self, client_id: str) -> bool:
        sql = "DELETE FROM auth_clients WHERE client_id = ?"
        return await self._db.run_write(_execute, sql, client_id) > 0

    async def list_clients(self) -> list[ClientRecord]:
        rows = await self._db.run_read(_rows, "SELECT data FROM auth_clients ORDER BY client_id")
        return [from_doc(ClientRecord, json.loads(data)) for data in rows]

    # -- users ----------------------------------------------------------------------

    async def add_user(self, user: UserRecord) -> None:
        sql = "INSERT INTO auth_users(id, name, data) VALUES (?, ?, ?)"
        if not await self._db.run_write(_insert_unique, sql, user.id, user.email, _dumps(user)):
            raise AuthRecordExists(f"user {user.email!r} already exists")

    async def get_user(self, user_id: str) -> UserRecord | None:
        data = await self._db.run_read(_one, "SELECT data FROM auth_users WHERE id = ?", user_id)
        return None if data is None else from_doc(UserRecord, json.loads(data))

    async def get_user_by_name(self, name: str) -> UserRecord | None:
        data = await self._db.run_read(_one, "SELECT data FROM auth_users WHERE name = ?", name)
        return None if data is None else from_doc(UserRecord, json.loads(data))

    async def update_user(self, user_id: str, changes: Mapping[str, Any]) -> UserRecord | None:
        changed = json.dumps(dict(changes), separators=(",", ":"))
        data = await self._db.run_write(_update_user, user_id, changed)
        return None if data is None else from_doc(UserRecord, json.loads(data))

    async def delete_user(self, user_id: str) -> None:
        await self._db.run_write(_execute, "DELETE FROM auth_users WHERE id = ?", user_id)

    async def list_users(self) -> list[UserRecord]:
        rows = await self._db.run_read(_rows, "SELECT data FROM auth_users ORDER BY name, id")
        return [from_doc(UserRecord, json.loads(data)) for data in rows]

    # -- codes and refresh tokens ---------------------------------------------------

    async def put_code(self, code: AuthorizationCode) -> None:
        sql = "INSERT INTO auth_codes(code_hash, data, expires_at) VALUES (?, ?, ?)"
        await self._db.run_write(_execute, sql, code.code_hash, _dumps(code), code.expires_at)

    async def take_code(self, code_hash: str) -> Redemption | None:
        taken = await self._db.run_write(_take, "auth_codes", "code_hash", code_hash)
        if taken is None:
            return None
        code = from_doc(AuthorizationCode, json.loads(taken[0]))
        return Redemption(first_use=taken[1], code=code)

    async def put_refresh(self, token: RefreshToken) -> None:
        sql = (
            "INSERT INTO auth_refresh(token_hash, grant_id, data, expires_at, used, revoked) "
            "VALUES (?, ?, ?, ?, ?, ?)"
        )
        args = (token.grant.grant_id, _dumps(token), token.expires_at, token.used, token.revoked)
        await self._db.run_write(_execute, sql, token.token_hash, *args)

    async def take_refresh(self, token_hash: str) -> Redemption | None:
        taken = await self._db.run_write(_take, "auth_refresh", "token_hash", token_hash)
        if taken is None:
            return None
        token = await self.get_refresh(token_hash)
        return Redemption(first_use=taken[1], refresh=token)

    async def get_refresh(self, token_hash: str) -> RefreshToken | None:
        sql = "SELECT data, used, revoked FROM auth_refresh WHERE token_hash = ?"
        row = await self._db.run_read(_row, sql, token_hash)
        return None if row is None else _refresh_row(*row)

    # -- revocation -----------------------------------------------------------------

    async def record_issued(self, jti: str, grant_id: str, expires_at: float) -> None:
        sql = "INSERT OR IGNORE INTO auth_issued(jti, grant_id, expires_at) VALUES (?, ?, ?)"
        await self._db.run_write(_execute, sql, jti, grant_id, expires_at)

    async def revoke_grant(self, grant_id: str) -> None:
        self._revocations += 1
        await self._db.run_write(_revoke_grant, grant_id)

    async def revoke_jti(self, jti: str, expires_at: float) -> None:
        self._revocations += 1
        sql = "INSERT OR IGNORE INTO auth_revoked(jti, expires_at) VALUES (?, ?)"
        await self._db.run_write(_execute, sql, jti, expires_at)

    async def is_revoked(self, jti: str) -> bool:
        sql = "SELECT 1 FROM auth_revoked WHERE jti = ?"
        return await self._db.run_read(_one, sql, jti) is not None

    # -- launch contexts and one-time jtis ------------------------------------------

    async def put_launch(self, launch: LaunchContext) -> None:
        sql = "INSERT OR REPLACE INTO auth_launch(launch_id, data, expires_at) VALUES (?, ?, ?)"
        await self._db.run_write(_execute, sql, launch.launch_id, _dumps(launch), launch.expires_at)

    async def get_launch(self, launch_id: str) -> LaunchContext | None:
        sql = "SELECT data FROM auth_launch WHERE launch_id = ?"
        data = await self._db.run_read(_one, sql, launch_id)
        return None if data is None else from_doc(LaunchContext, json.loads(data))

    async def put_session(self, session: SignInSession) -> None:
        sql = (
            "INSERT OR REPLACE INTO auth_sessions(session_hash, data, expires_at) VALUES (?, ?, ?)"
        )
        data = _dumps(session)
        await self._db.run_write(_execute, sql, session.session_hash, data, session.expires_at)

    async def get_session(self, session_hash: str) -> SignInSession | None:
        sql = "SELECT data FROM auth_sessions WHERE session_hash = ?"
        data = await self._db.run_read(_one, sql, session_hash)
        return None if data is None else from_doc(SignInSession, json.loads(data))

    async def update_session(self, session_hash: str, changes: Mapping[str, Any]) -> bool:
        changed = json.dumps(to_doc_fields(changes), separators=(",", ":"))
        return await self._db.run_write(_update_session, session_hash, changed)

    async def delete_session(self, session_hash: str) -> None:
        sql = "DELETE FROM auth_sessions WHERE session_hash = ?"
        await self._db.run_write(_execute, sql, session_hash)

    async def list_sessions(self, user_id: str) -> list[SignInSession]:
        sql = (
            "SELECT data FROM auth_sessions WHERE json_extract(data, '$.user_id') = ?"
            " ORDER BY json_extract(data, '$.auth_time'), session_hash"
        )
        rows = await self._db.run_read(_rows, sql, user_id)
        return [from_doc(SignInSession, json.loads(data)) for data in rows]

    async def delete_sessions(self, user_id: str) -> int:
        sql = "DELETE FROM auth_sessions WHERE json_extract(data, '$.user_id') = ?"
        return await self._db.run_write(_execute, sql, user_id)

    async def use_jti(self, key: str, expires_at: float) -> bool:
        sql = "INSERT INTO auth_jti(key, expires_at) VALUES (?, ?)"
        return await self._db.run_write(_insert_unique, sql, key, expires_at)

    async def purge(self, now: float) -> int:
        return await self._db.run_write(_purge, now)


def _row(conn: sqlite3.Connection, sql: str, *args: Any) -> tuple[Any, ...] | None:
    row = conn.execute(sql, args).fetchone()
    return None if row is None else tuple(row)
