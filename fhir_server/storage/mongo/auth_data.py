"""The auth data sub-store on MongoDB (see ``fhir_server.storage.auth_port``).

One collection per record kind, keyed by ``_id``. Redemption and one-time
``jti``s rely on single-document atomic operations (``find_one_and_update``
on ``used: false``, a unique ``_id`` insert), so they stay correct with
several radhub instances on one database. Expired records carry a TTL index
on ``expires`` as well as being purged explicitly (the emulator has no TTL).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from pymongo import ASCENDING, IndexModel, ReturnDocument
from pymongo.errors import DuplicateKeyError

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
from fhir_server.storage.mongo.errors import DRIVER_ERRORS, translate
from fhir_server.storage.mongo.journal import Database

Doc = dict[str, Any]
T = TypeVar("T")

CLIENTS = "auth_clients"
USERS = "auth_users"
CODES = "auth_codes"
REFRESH = "auth_refresh"
ISSUED = "auth_issued"
REVOKED = "auth_revoked"
LAUNCH = "auth_launch"
JTI = "auth_jti"
SESSIONS = "auth_sessions"
_EXPIRING = (CODES, REFRESH, ISSUED, REVOKED, LAUNCH, JTI, SESSIONS)


@contextmanager
def _mapped() -> Iterator[None]:
    try:
        yield
    except DuplicateKeyError as exc:
        raise AuthRecordExists("the record already exists") from exc
    except DRIVER_ERRORS as exc:
        raise translate(exc) from exc


def _expiring(record: Any, expires_at: float) -> Doc:
    # ``expires`` (a date) feeds the TTL index; ``expires_at`` stays the record's float
    return {**to_doc(record), "expires": datetime.fromtimestamp(expires_at, tz=UTC)}


def _name_key(name: str) -> str:
    return name.casefold()


class MongoAuthData:
    """``AuthData`` over a MongoDB database."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._revocations = 0

    @property
    def revocations(self) -> int:
        return self._revocations

    async def create_indexes(self) -> None:
        """Unique login names, grant families and TTLs; run by the store at start."""
        with _mapped():
            await self._db[USERS].create_indexes([IndexModel([("name", ASCENDING)], unique=True)])
            grant = [IndexModel([("grant.grant_id", ASCENDING)])]
            await self._db[REFRESH].create_indexes(grant)
            await self._db[ISSUED].create_indexes([IndexModel([("grant_id", ASCENDING)])])
            by_user = IndexModel([("user_id", ASCENDING), ("auth_time", ASCENDING)])
            await self._db[SESSIONS].create_indexes([by_user])
            for name in _EXPIRING:
                ttl = IndexModel([("expires", ASCENDING)], expireAfterSeconds=0)
                await self._db[name].create_indexes([ttl])

    # -- clients --------------------------------------------------------------------

    async def put_client(self, client: ClientRecord) -> None:
        with _mapped():
            doc = {"_id": client.client_id, **to_doc(client)}
            await self._db[CLIENTS].replace_one({"_id": client.client_id}, doc, upsert=True)

    async def get_client(self, client_id: str) -> ClientRecord | None:
        return await self._find(CLIENTS, client_id, ClientRecord)

    async def delete_client(self, client_id: str) -> bool:
        with _mapped():
            result = await self._db[CLIENTS].delete_one({"_id": client_id})
        return bool(result.deleted_count)

    async def list_clients(self) -> list[ClientRecord]:
        return await self._list(CLIENTS, "_id", ClientRecord)

    # -- users ----------------------------------------------------------------------

    async def add_user(self, user: UserRecord) -> None:
        doc = {"_id": user.id, "name": _name_key(user.email), **to_doc(user)}
        with _mapped():
            await self._db[USERS].insert_one(doc)

    async def get_user(self, user_id: str) -> UserRecord | None:
        return await self._find(USERS, user_id, UserRecord)

    async def get_user_by_name(self, name: str) -> UserRecord | None:
        with _mapped():
            doc = await self._db[USERS].find_one({"name": _name_key(name)})
        return None if doc is None else from_doc(UserRecord, doc)

    async def update_user(self, user_id: str, changes: Mapping[str, Any]) -> UserRecord | None:
        update = {k: list(v) if isinstance(v, tuple) else v for k, v in changes.items()}
        if isinstance(changes.get("email"), str):
            update["name"] = _name_key(changes["email"])
        with _mapped():
            doc = await self._db[USERS].find_one_and_update(
                {"_id": user_id}, {"$set": update}, return_document=ReturnDocument.AFTER
            )
        return None if doc is None else from_doc(UserRecord, doc)

    async def delete_user(self, user_id: str) -> None:
        with _mapped():
            await self._db[USERS].delete_one({"_id": user_id})

    async def list_users(self) -> list[UserRecord]:
        return await self._list(USERS, "name", UserRecord)

    # -- codes and refresh tokens ---------------------------------------------------

    async def put_code(self, code: AuthorizationCode) -> None:
        doc = {"_id": code.code_hash, "used": False, **_expiring(code, code.expires_at)}
        with _mapped():
            await self._db[CODES].insert_one(doc)

    async def take_code(self, code_hash: str) -> Redemption | None:
        doc, first = await self._take(CODES, code_hash)
        if doc is None:
            return None
        return Redemption(first_use=first, code=from_doc(AuthorizationCode, doc))

    async def put_refresh(self, token: RefreshToken) -> None:
        doc = {"_id": token.token_hash, **_expiring(token, token.expires_at)}
        with _mapped():
            await self._db[REFRESH].insert_one(doc)

    async def take_refresh(self, token_hash: str) -> Redemption | None:
        doc, first = await self._take(REFRESH, token_hash)
        if doc is None:
            return None
        return Redemption(first_use=first, refresh=from_doc(RefreshToken, doc))

    async def get_refresh(self, token_hash: str) -> RefreshToken | None:
        return await self._find(REFRESH, token_hash, RefreshToken)

    # -- revocation -----------------------------------------------------------------

    async def record_issued(self, jti: str, grant_id: str, expires_at: float) -> None:
        doc = {"_id": jti, "grant_id": grant_id, "expires_at": expires_at}
        doc["expires"] = datetime.fromtimestamp(expires_at, tz=UTC)
        with _mapped():
            await self._db[ISSUED].replace_one({"_id": jti}, doc, upsert=True)

    async def revoke_grant(self, grant_id: str) -> None:
        self._revocations += 1
        with _mapped():
            await self._db[REFRESH].update_many(
                {"grant.grant_id": grant_id}, {"$set": {"revoked": True}}
            )
            async for issued in self._db[ISSUED].find({"grant_id": grant_id}):
                await self._revoke(issued["_id"], issued["expires_at"])

    async def revoke_jti(self, jti: str, expires_at: float) -> None:
        self._revocations += 1
        with _mapped():
            await self._revoke(jti, expires_at)

    async def _revoke(self, jti: str, expires_at: float) -> None:
        doc = {"_id": jti, "expires_at": expires_at}
        doc["expires"] = datetime.fromtimestamp(expires_at, tz=UTC)
        await self._db[REVOKED].replace_one({"_id": jti}, doc, upsert=True)

    async def is_revoked(self, jti: str) -> bool:
        with _mapped():
            return await self._db[REVOKED].find_one({"_id": jti}, {"_id": 1}) is not None

    # -- launch contexts and one-time jtis ------------------------------------------

    async def put_launch(self, launch: LaunchContext) -> None:
        doc = {"_id": launch.launch_id, **_expiring(launch, launch.expires_at)}
        with _mapped():
            await self._db[LAUNCH].replace_one({"_id": launch.launch_id}, doc, upsert=True)

    async def get_launch(self, launch_id: str) -> LaunchContext | None:
        return await self._find(LAUNCH, launch_id, LaunchContext)

    async def put_session(self, session: SignInSession) -> None:
        doc = {"_id": session.session_hash, **_expiring(session, session.expires_at)}
        with _mapped():
            await self._db[SESSIONS].replace_one({"_id": session.session_hash}, doc, upsert=True)

    async def get_session(self, session_hash: str) -> SignInSession | None:
        return await self._find(SESSIONS, session_hash, SignInSession)

    async def update_session(self, session_hash: str, changes: Mapping[str, Any]) -> bool:
        update = to_doc_fields(changes)
        if "expires_at" in update:
            update["expires"] = datetime.fromtimestamp(update["expires_at"], tz=UTC)
        with _mapped():
            result = await self._db[SESSIONS].update_one({"_id": session_hash}, {"$set": update})
        return result.matched_count == 1

    async def delete_session(self, session_hash: str) -> None:
        with _mapped():
            await self._db[SESSIONS].delete_one({"_id": session_hash})

    async def list_sessions(self, user_id: str) -> list[SignInSession]:
        order = [("auth_time", ASCENDING), ("_id", ASCENDING)]
        with _mapped():
            docs = await self._db[SESSIONS].find({"user_id": user_id}).sort(order).to_list(None)
        return [from_doc(SignInSession, doc) for doc in docs]

    async def delete_sessions(self, user_id: str) -> int:
        with _mapped():
            result = await self._db[SESSIONS].delete_many({"user_id": user_id})
        return result.deleted_count

    async def use_jti(self, key: str, expires_at: float) -> bool:
        doc = {"_id": key, "expires_at": expires_at}
        doc["expires"] = datetime.fromtimestamp(expires_at, tz=UTC)
        try:
            with _mapped():
                await self._db[JTI].insert_one(doc)
        except AuthRecordExists:
            return False
        return True

    async def purge(self, now: float) -> int:
        count = 0
        with _mapped():
            for name in _EXPIRING:
                result = await self._db[name].delete_many({"expires_at": {"$lt": now}})
                count += result.deleted_count
        return count

    # -- plumbing -------------------------------------------------------------------

    async def _list(self, collection: str, order: str, cls: type[T]) -> list[T]:
        with _mapped():
            docs = await self._db[collection].find({}).sort(order, ASCENDING).to_list(None)
        return [from_doc(cls, doc) for doc in docs]

    async def _find(self, collection: str, key: str, cls: type[T]) -> T | None:
        with _mapped():
            doc = await self._db[collection].find_one({"_id": key})
        return None if doc is None else from_doc(cls, doc)

    async def _take(self, collection: str, key: str) -> tuple[Doc | None, bool]:
        with _mapped():
            doc = await self._db[collection].find_one_and_update(
                {"_id": key, "used": False}, {"$set": {"used": True}}
            )
            if doc is not None:
                return doc, True
            return await self._db[collection].find_one({"_id": key}), False
