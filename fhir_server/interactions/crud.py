"""The instance interactions: read, vread, create, update, patch, delete, and their
conditional forms. Plain async functions over the store; HTTP, bundles and the
bridges all call these. See https://hl7.org/fhir/R4/http.html
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import jsonpatch
import orjson

from fhir_server.access.context import AuthContext, Interaction
from fhir_server.access.stored import Searcher, lookup_in
from fhir_server.errors import (
    Forbidden,
    Gone,
    InvalidRequest,
    InvalidResource,
    Issue,
    NotFound,
    PreconditionFailed,
    UnknownResourceType,
    UnprocessableEntity,
)
from fhir_server.interactions.conditional import find_conditional
from fhir_server.interactions.services import Services
from fhir_server.resources.meta import stamp
from fhir_server.resources.types import SERVER_WRITTEN_TYPES, SUPPORTED_TYPES, is_valid_id
from fhir_server.resources.validate import check_type as check_resource_type
from fhir_server.resources.validate import validate_resource
from fhir_server.search.ast import SearchQuery
from fhir_server.search.extract import extract_index, extract_packed
from fhir_server.search.values import IndexEntry
from fhir_server.storage.base import (
    Method,
    NewVersion,
    SearchPage,
    Store,
    StoredVersion,
    Transaction,
)
from fhir_server.url_integers import url_integer


@dataclass(frozen=True)
class Outcome:
    """What an interaction produced: the HTTP status, the version to show (if any),
    and informational issues."""

    status: int
    version: StoredVersion | None = None
    issues: tuple[Issue, ...] = ()
    created: bool = False
    # a delete's last version before it: whose record it was, for the audit record
    deleted: StoredVersion | None = None


def check_type(resource_type: str) -> None:
    if resource_type not in SUPPORTED_TYPES:
        raise UnknownResourceType(f"resource type {resource_type!r} is not supported")


def check_id(id: str) -> None:
    if not isinstance(id, str) or not is_valid_id(id):
        raise InvalidRequest(f"invalid resource id {id!r}")


def parse_version(text: str) -> int:
    """A versionId as radhub writes them (a positive integer)."""
    version = url_integer(text)
    if version is None or version < 1:
        raise NotFound(f"no version {text!r}")
    return version


def loads(body: bytes) -> dict[str, Any]:
    value = orjson.loads(body)
    assert isinstance(value, dict)
    return value


def entries_of(svc: Services, version: StoredVersion) -> list[IndexEntry]:
    if version.body is None:
        return []
    return extract_index(loads(version.body), svc.registry)


async def _check_visible(
    svc: Services,
    auth: AuthContext,
    version: StoredVersion,
    action: Interaction,
    searcher: Searcher,
) -> None:
    """404 unless the caller's filter reaches ``version``; a filter that follows
    chains (a referrer's own patients) is answered by ``searcher`` (the store, or
    the transaction the interaction runs in)."""
    await svc.policy.check_stored(
        auth,
        action,
        version.resource_type,
        version.id,
        lambda: entries_of(svc, version),
        lookup_in(searcher),
    )


def _check_writable(svc: Services, resource_type: str) -> None:
    if resource_type in SERVER_WRITTEN_TYPES:
        raise Forbidden(f"{resource_type} is written by the server only")


async def _save(
    tx: Transaction,
    svc: Services,
    auth: AuthContext,
    resource_type: str,
    id: str,
    resource: dict[str, Any] | None,
    current: StoredVersion | None,
    index: Sequence[IndexEntry] | None = None,
) -> StoredVersion:
    """Write the next version of ``resource_type/id``: stamps meta, extracts the
    index (unless extracted ahead: the stamps do not change it), checks the caller
    may hold the new content, and stores it."""
    version = (current.version if current else 0) + 1
    moment = svc.clock()
    if current is not None and moment <= current.last_updated:
        # lastUpdated never goes backwards within a resource, even if the clock does
        moment = current.last_updated + timedelta(microseconds=1)
    method: Method = "delete" if resource is None else "create" if current is None else "update"
    body: bytes | None = None
    if resource is None:
        index = []
    else:
        stamped = stamp(resource, id, version, moment)
        body = orjson.dumps(stamped)
        if index is None:
            index = extract_packed(stamped, svc.registry)
        fresh = current is None or current.deleted
        action = Interaction.CREATE if fresh else Interaction.UPDATE
        svc.policy.check_content(auth, action, resource_type, id, index)
    new = NewVersion(resource_type, id, version, moment, method, body, index)
    return await tx.write(new)


# -- read ------------------------------------------------------------------------------


async def read(svc: Services, auth: AuthContext, resource_type: str, id: str) -> Outcome:
    """See https://hl7.org/fhir/R4/http.html#read"""
    check_type(resource_type)
    svc.policy.authorize(auth, Interaction.READ, resource_type)
    current = await svc.store.read(resource_type, id)
    return await _shown(svc, auth, current, f"{resource_type}/{id}", Interaction.READ, svc.store)


async def read_in(
    tx: Transaction, svc: Services, auth: AuthContext, resource_type: str, id: str
) -> Outcome:
    check_type(resource_type)
    svc.policy.authorize(auth, Interaction.READ, resource_type)
    current = await tx.current(resource_type, id)
    return await _shown(svc, auth, current, f"{resource_type}/{id}", Interaction.READ, tx)


async def _shown(
    svc: Services,
    auth: AuthContext,
    version: StoredVersion | None,
    what: str,
    action: Interaction,
    searcher: Searcher,
) -> Outcome:
    if version is None:
        raise NotFound(f"{what} is not known")
    if version.deleted:
        # 410 only for what the caller may see: otherwise it would reveal existence
        previous = version
        svc.policy.check_resource(auth, action, previous.resource_type, previous.id, [])
        raise Gone(f"{what} was deleted", headers={"ETag": f'W/"{version.version}"'})
    await _check_visible(svc, auth, version, action, searcher)
    return Outcome(200, version)


async def vread(
    svc: Services, auth: AuthContext, resource_type: str, id: str, version_id: str
) -> Outcome:
    """See https://hl7.org/fhir/R4/http.html#vread"""
    check_type(resource_type)
    svc.policy.authorize(auth, Interaction.VREAD, resource_type)
    version = await svc.store.vread(resource_type, id, parse_version(version_id))
    what = f"{resource_type}/{id}/_history/{version_id}"
    return await _shown(svc, auth, version, what, Interaction.VREAD, svc.store)


# -- create ----------------------------------------------------------------------------


async def create(
    svc: Services, auth: AuthContext, resource: Any, *, if_none_exist: str | None = None
) -> Outcome:
    """See https://hl7.org/fhir/R4/http.html#create and #ccreate"""
    # validated and indexed before the transaction: the write lock is then held
    # only for the write
    validate_resource(resource)
    index = extract_packed(resource, svc.registry)
    if if_none_exist is None:
        # nothing to look up first: one write, which the store commits as it goes
        # (one hand-off to its writer instead of three, the write lock held that long)
        return await create_in(
            OneWrite(svc.store), svc, auth, resource, validated=True, index=index
        )
    async with svc.store.transaction() as tx:
        return await create_in(
            tx, svc, auth, resource, if_none_exist=if_none_exist, validated=True, index=index
        )


class OneWrite:
    """A transaction for work that writes one version and reads nothing it must
    hold steady: the write is committed (durably) on its own, through
    ``Store.write_many``; reads see the committed state."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def current(self, resource_type: str, id: str) -> StoredVersion | None:
        return await self._store.read(resource_type, id)

    async def search(self, query: SearchQuery) -> SearchPage:
        return await self._store.search(query)

    async def write(self, version: NewVersion) -> StoredVersion:
        (written,) = await self._store.write_many([version])
        return written


async def create_in(
    tx: Transaction,
    svc: Services,
    auth: AuthContext,
    resource: Any,
    *,
    if_none_exist: str | None = None,
    id: str | None = None,
    validated: bool = False,
    index: Sequence[IndexEntry] | None = None,
) -> Outcome:
    """Create inside ``tx``; ``index``: the resource's, if extracted ahead."""
    resource_type = check_resource_type(resource) if validated else validate_resource(resource)
    svc.policy.authorize(auth, Interaction.CREATE, resource_type)
    _check_writable(svc, resource_type)
    if if_none_exist is not None:
        existing = await find_conditional(tx, svc, auth, resource_type, if_none_exist)
        if len(existing) > 1:
            raise PreconditionFailed(
                f"If-None-Exist matched {len(existing)} {resource_type} resources"
            )
        if existing:
            return Outcome(200, existing[0])
    written = await _save(tx, svc, auth, resource_type, id or svc.new_id(), resource, None, index)
    return Outcome(201, written, created=True)


# -- update ----------------------------------------------------------------------------


def parse_if_match(header: str) -> int:
    """``If-Match: W/"3"`` → 3."""
    text = header.strip()
    if text.startswith("W/"):
        text = text[2:]
    text = text.strip('"')
    version = url_integer(text)
    if version is None:
        raise PreconditionFailed(f"If-Match {header!r} names no version of this server")
    return version


async def update(
    svc: Services,
    auth: AuthContext,
    resource_type: str,
    id: str,
    resource: Any,
    *,
    if_match: str | None = None,
) -> Outcome:
    """See https://hl7.org/fhir/R4/http.html#update (including create-on-update)."""
    check_type(resource_type)
    validate_resource(resource)
    index = extract_packed(resource, svc.registry)  # outside the write lock, as validation
    async with svc.store.transaction() as tx:
        return await update_in(
            tx,
            svc,
            auth,
            resource_type,
            id,
            resource,
            if_match=if_match,
            validated=True,
            index=index,
        )


def _check_body_matches(resource: Any, resource_type: str, id: str, validated: bool) -> None:
    body_type = check_resource_type(resource) if validated else validate_resource(resource)
    if body_type != resource_type:
        raise InvalidResource(f"the body is a {body_type}, the URL names a {resource_type}")
    body_id = resource.get("id")
    if body_id is None:
        raise InvalidResource("the resource in an update must carry its id")
    if body_id != id:
        raise InvalidResource(f"the body's id {body_id!r} differs from the URL's {id!r}")


async def update_in(
    tx: Transaction,
    svc: Services,
    auth: AuthContext,
    resource_type: str,
    id: str,
    resource: Any,
    *,
    if_match: str | None = None,
    validated: bool = False,
    index: Sequence[IndexEntry] | None = None,
) -> Outcome:
    """Update inside ``tx``; ``index``: the resource's, if extracted ahead."""
    check_type(resource_type)
    check_id(id)
    _check_body_matches(resource, resource_type, id, validated)
    svc.policy.authorize(auth, Interaction.UPDATE, resource_type)
    _check_writable(svc, resource_type)
    current = await tx.current(resource_type, id)
    _check_if_match(current, if_match, f"{resource_type}/{id}")
    if current is not None and not current.deleted:
        await _check_visible(svc, auth, current, Interaction.UPDATE, tx)
    written = await _save(tx, svc, auth, resource_type, id, resource, current, index)
    created = current is None or current.deleted
    return Outcome(201 if created else 200, written, created=created)


def _check_if_match(current: StoredVersion | None, if_match: str | None, what: str) -> None:
    if if_match is None:
        return
    wanted = parse_if_match(if_match)
    have = current.version if current is not None and not current.deleted else None
    if have != wanted:
        raise PreconditionFailed(
            f"{what} is at version {have if have is not None else 'none'}, not {wanted}"
        )


async def conditional_update(
    svc: Services, auth: AuthContext, resource_type: str, criteria: str, resource: Any
) -> Outcome:
    """See https://hl7.org/fhir/R4/http.html#cond-update"""
    async with svc.store.transaction() as tx:
        return await conditional_update_in(tx, svc, auth, resource_type, criteria, resource)


async def conditional_update_in(
    tx: Transaction,
    svc: Services,
    auth: AuthContext,
    resource_type: str,
    criteria: str,
    resource: Any,
) -> Outcome:
    check_type(resource_type)
    matches = await find_conditional(tx, svc, auth, resource_type, criteria)
    if len(matches) > 1:
        raise PreconditionFailed(f"the criteria matched {len(matches)} {resource_type} resources")
    body_id = resource.get("id") if isinstance(resource, dict) else None
    if not matches:
        if body_id is not None:
            return await update_in(tx, svc, auth, resource_type, body_id, resource)
        return await create_in(tx, svc, auth, resource)
    target = matches[0]
    if body_id is not None and body_id != target.id:
        raise InvalidResource(f"the body's id {body_id!r} differs from the match {target.id!r}")
    with_id = {**resource, "id": target.id} if isinstance(resource, dict) else resource
    return await update_in(tx, svc, auth, resource_type, target.id, with_id)


# -- patch -----------------------------------------------------------------------------


async def patch(
    svc: Services,
    auth: AuthContext,
    resource_type: str,
    id: str,
    operations: Any,
    *,
    if_match: str | None = None,
) -> Outcome:
    """JSON Patch. See https://hl7.org/fhir/R4/http.html#patch"""
    async with svc.store.transaction() as tx:
        return await patch_in(tx, svc, auth, resource_type, id, operations, if_match=if_match)


# What the ``copy`` operations of one JSON Patch may duplicate, in all (encoded bytes).
# n copies of a value into itself make it 2**n times larger: 20 operations in a
# 1 kB body held the event loop for 2 s, 30 would take hours and all the memory.
MAX_PATCH_COPY_BYTES = 256 * 1024


def _copied_size(document: Any, operation: Any) -> int:
    """The encoded size of what a ``copy`` operation duplicates (0 for other ops).
    Raises like jsonpatch would for a ``from`` that does not resolve."""
    if not isinstance(operation, dict) or operation.get("op") != "copy":
        return 0
    source = jsonpatch.JsonPointer(operation["from"]).resolve(document)
    return len(orjson.dumps(source))


def apply_json_patch(resource: dict[str, Any], operations: Any) -> dict[str, Any]:
    """Apply ``operations`` in order, refusing a patch whose copies would duplicate
    more than ``MAX_PATCH_COPY_BYTES`` (the rest is bounded by the body size)."""
    if not isinstance(operations, list):
        raise InvalidRequest("a JSON Patch document is an array of operations")
    try:
        patched: Any = copy.deepcopy(resource)
        copied = 0
        for operation in operations:
            copied += _copied_size(patched, operation)
            if copied > MAX_PATCH_COPY_BYTES:
                raise UnprocessableEntity(
                    f"the patch copies more than {MAX_PATCH_COPY_BYTES} bytes"
                )
            patched = jsonpatch.JsonPatch([operation]).apply(patched, in_place=True)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
        raise UnprocessableEntity(f"the patch cannot be applied: {exc}") from None
    except (TypeError, KeyError, ValueError, AttributeError) as exc:
        raise InvalidRequest(f"malformed JSON Patch: {exc}") from None
    if not isinstance(patched, dict):
        raise UnprocessableEntity("the patch does not leave a resource")
    if (
        patched.get("resourceType") != resource["resourceType"]
        or patched.get("id") != resource["id"]
    ):
        raise UnprocessableEntity("a patch may not change resourceType or id")
    return patched


async def patch_in(
    tx: Transaction,
    svc: Services,
    auth: AuthContext,
    resource_type: str,
    id: str,
    operations: Any,
    *,
    if_match: str | None = None,
) -> Outcome:
    check_type(resource_type)
    svc.policy.authorize(auth, Interaction.UPDATE, resource_type)
    _check_writable(svc, resource_type)
    current = await tx.current(resource_type, id)
    await _shown(svc, auth, current, f"{resource_type}/{id}", Interaction.UPDATE, tx)
    assert current is not None and current.body is not None
    _check_if_match(current, if_match, f"{resource_type}/{id}")
    patched = apply_json_patch(loads(current.body), operations)
    validate_resource(patched)
    written = await _save(tx, svc, auth, resource_type, id, patched, current)
    return Outcome(200, written)


# -- delete ----------------------------------------------------------------------------


async def delete(svc: Services, auth: AuthContext, resource_type: str, id: str) -> Outcome:
    """Soft delete: history keeps every version. See https://hl7.org/fhir/R4/http.html#delete"""
    async with svc.store.transaction() as tx:
        return await delete_in(tx, svc, auth, resource_type, id)


async def delete_in(
    tx: Transaction, svc: Services, auth: AuthContext, resource_type: str, id: str
) -> Outcome:
    check_type(resource_type)
    svc.policy.authorize(auth, Interaction.DELETE, resource_type)
    _check_writable(svc, resource_type)
    current = await tx.current(resource_type, id)
    if current is None or current.deleted:
        # the spec allows 204 for a resource that does not exist (any more)
        return Outcome(204)
    await _check_visible(svc, auth, current, Interaction.DELETE, tx)
    written = await _save(tx, svc, auth, resource_type, id, None, current)
    return Outcome(204, written, deleted=current)


async def conditional_delete(
    svc: Services, auth: AuthContext, resource_type: str, criteria: str
) -> Outcome:
    """Single-match conditional delete. See https://hl7.org/fhir/R4/http.html#cdelete"""
    async with svc.store.transaction() as tx:
        return await conditional_delete_in(tx, svc, auth, resource_type, criteria)


async def conditional_delete_in(
    tx: Transaction, svc: Services, auth: AuthContext, resource_type: str, criteria: str
) -> Outcome:
    check_type(resource_type)
    svc.policy.authorize(auth, Interaction.DELETE, resource_type)
    matches = await find_conditional(tx, svc, auth, resource_type, criteria)
    if len(matches) > 1:
        raise PreconditionFailed(
            f"the criteria matched {len(matches)} {resource_type} resources; "
            "this server deletes one at a time"
        )
    if not matches:
        return Outcome(204)
    return await delete_in(tx, svc, auth, resource_type, matches[0].id)
