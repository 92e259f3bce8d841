"""Batch and transaction Bundles. See https://hl7.org/fhir/R4/http.html#transaction

A transaction runs in one store transaction: every entry lands or none does.
Entries are processed in the order the spec requires (DELETE, POST, PUT/PATCH,
GET/HEAD); ``urn:uuid:`` and conditional references are resolved before any
resource is written. A batch runs each entry on its own and reports each outcome.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from fhir_server.access.context import AuthContext
from fhir_server.errors import FhirError, InvalidRequest, Issue, PreconditionFailed
from fhir_server.interactions import crud
from fhir_server.interactions.bundles import bundle, etag, status_text
from fhir_server.interactions.conditional import find_conditional
from fhir_server.interactions.references import rewrite_references
from fhir_server.interactions.search import search
from fhir_server.interactions.services import Services
from fhir_server.resources.meta import format_instant
from fhir_server.search.values import IndexEntry
from fhir_server.storage.base import Transaction

_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}


@dataclass
class Entry:
    """One request entry of the incoming Bundle, with where it stood."""

    index: int
    method: str
    url: str
    resource: Any
    full_url: str | None
    if_none_exist: str | None
    if_match: str | None
    assigned_id: str | None = None
    prepared_at: int | None = None  # its place among the resources prepared ahead
    touched: str | None = None  # the Type/id the entry wrote or deleted, once run
    response: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def target(self) -> tuple[list[str], str]:
        """The request URL's path segments and query (``_split``), parsed once."""
        return _split(self.url)


def _raw_entries(body: dict[str, Any], svc: Services) -> list[Any]:
    raw = body.get("entry", [])
    if not isinstance(raw, list):
        raise InvalidRequest("Bundle.entry must be an array")
    if len(raw) > svc.limits.max_bundle_entries:
        raise InvalidRequest(f"at most {svc.limits.max_bundle_entries} entries per Bundle")
    return raw


def _parse_entries(body: dict[str, Any], svc: Services) -> list[Entry]:
    return [_parse_entry(i, e) for i, e in enumerate(_raw_entries(body, svc))]


def _parse_entry(index: int, raw: Any) -> Entry:
    where = f"Bundle.entry[{index}]"
    if not isinstance(raw, dict) or not isinstance(raw.get("request"), dict):
        raise InvalidRequest(f"{where} has no request")
    request = raw["request"]
    method, url = request.get("method"), request.get("url")
    valid_method = isinstance(method, str) and method in _ORDER
    if not valid_method or not isinstance(url, str) or not url:
        raise InvalidRequest(f"{where}.request needs a method and a url")
    for name, value in (
        ("fullUrl", raw.get("fullUrl")),
        ("request.ifNoneExist", request.get("ifNoneExist")),
        ("request.ifMatch", request.get("ifMatch")),
    ):
        if value is not None and not isinstance(value, str):
            raise InvalidRequest(f"{where}.{name} must be a string")
    try:
        urlsplit(url)
    except ValueError as exc:
        raise InvalidRequest(f"{where}.request.url is malformed: {exc}") from None
    return Entry(
        index=index,
        method=method,
        url=url,
        resource=raw.get("resource"),
        full_url=raw.get("fullUrl"),
        if_none_exist=request.get("ifNoneExist"),
        if_match=request.get("ifMatch"),
    )


def _split(url: str) -> tuple[list[str], str]:
    """``Patient/1/_history/2?x=y`` → (["Patient", "1", "_history", "2"], "x=y")."""
    parts = urlsplit(url)
    path = parts.path.strip("/")
    return ([p for p in path.split("/") if p] if path else []), parts.query


def _outcome_response(outcome: crud.Outcome, svc: Services) -> dict[str, Any]:
    response: dict[str, Any] = {"status": status_text(outcome.status)}
    version = outcome.version
    if version is not None and version.body is not None:
        response["location"] = f"{version.resource_type}/{version.id}/_history/{version.version}"
        response["etag"] = etag(version)
        response["lastModified"] = format_instant(version.last_updated)
    return response


def _entry_result(outcome: crud.Outcome, svc: Services) -> dict[str, Any]:
    result: dict[str, Any] = {}
    version = outcome.version
    if version is not None and version.body is not None:
        result["fullUrl"] = f"{svc.base_url}/{version.resource_type}/{version.id}"
        # the stored bytes go into the response as they are, not parsed and re-encoded
        result["resource"] = orjson.Fragment(version.body)
    result["response"] = _outcome_response(outcome, svc)
    return result


async def _run_entry(
    tx: Transaction,
    svc: Services,
    auth: AuthContext,
    entry: Entry,
    index: Sequence[IndexEntry] | None = None,
) -> dict[str, Any]:
    """Run one entry; ``index``: its resource's index, when prepared (and so validated)."""
    path, query = entry.target
    method = entry.method
    if method == "POST" and len(path) == 1:
        outcome = await crud.create_in(
            tx,
            svc,
            auth,
            entry.resource,
            if_none_exist=entry.if_none_exist,
            id=entry.assigned_id,
            validated=index is not None,
            index=index,
        )
    elif method == "PUT" and len(path) == 1 and query:
        outcome = await crud.conditional_update_in(tx, svc, auth, path[0], query, entry.resource)
    elif method == "PUT" and len(path) == 2:
        outcome = await crud.update_in(
            tx,
            svc,
            auth,
            path[0],
            path[1],
            entry.resource,
            if_match=entry.if_match,
            validated=index is not None,
            index=index,
        )
    elif method == "PATCH" and len(path) == 2:
        outcome = await crud.patch_in(
            tx, svc, auth, path[0], path[1], _patch_body(entry), if_match=entry.if_match
        )
    elif method == "DELETE" and len(path) == 1 and query:
        outcome = await crud.conditional_delete_in(tx, svc, auth, path[0], query)
    elif method == "DELETE" and len(path) == 2:
        outcome = await crud.delete_in(tx, svc, auth, path[0], path[1])
    elif method in ("GET", "HEAD"):
        return await _run_get(tx, svc, auth, path, query)
    else:
        raise InvalidRequest(f"{method} {entry.url} is not an interaction this server supports")
    version = outcome.version
    if version is not None:
        entry.touched = f"{version.resource_type}/{version.id}"
    elif len(path) == 2:
        entry.touched = f"{path[0]}/{path[1]}"
    return _entry_result(outcome, svc)


def _patch_body(entry: Entry) -> Any:
    """A JSON Patch travels in a Binary (base64) inside a Bundle."""
    resource = entry.resource
    if isinstance(resource, dict) and resource.get("resourceType") == "Binary":
        try:
            return orjson.loads(base64.b64decode(resource.get("data", "")))
        except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
            raise InvalidRequest(f"the patch Binary does not hold JSON: {exc}") from None
    return resource


async def _run_get(
    tx: Transaction, svc: Services, auth: AuthContext, path: list[str], query: str
) -> dict[str, Any]:
    params = parse_qsl(query, keep_blank_values=True)
    if len(path) == 2:
        outcome = await crud.read_in(tx, svc, auth, path[0], path[1])
        return _entry_result(outcome, svc)
    if len(path) <= 1:
        result = await search(svc, auth, path[0] if path else None, params, tx=tx)
        return {"resource": result, "response": {"status": "200 OK"}}
    raise InvalidRequest(f"GET {'/'.join(path)} is not supported inside a Bundle")


# -- transaction -----------------------------------------------------------------------


async def _resolve_ids(
    tx: Transaction, svc: Services, auth: AuthContext, entries: list[Entry]
) -> dict[str, str]:
    """Map every ``fullUrl`` a reference may use to the id it will have."""
    mapping: dict[str, str] = {}
    for entry in entries:
        path, _ = entry.target
        key = entry.full_url
        if entry.method == "POST" and len(path) == 1:
            target = await _post_target(tx, svc, auth, entry, path[0])
            if key:
                mapping[key] = target
        elif entry.method == "PUT" and len(path) == 2 and key:
            mapping[key] = f"{path[0]}/{path[1]}"
    return mapping


async def _post_target(
    tx: Transaction, svc: Services, auth: AuthContext, entry: Entry, resource_type: str
) -> str:
    if entry.if_none_exist:
        found = await find_conditional(tx, svc, auth, resource_type, entry.if_none_exist)
        if len(found) > 1:
            raise PreconditionFailed(f"ifNoneExist matched {len(found)} {resource_type}")
        if found:
            return f"{resource_type}/{found[0].id}"
    entry.assigned_id = svc.new_id()
    return f"{resource_type}/{entry.assigned_id}"


async def _resolve_conditional_reference(
    tx: Transaction, svc: Services, auth: AuthContext, reference: str
) -> str:
    resource_type, _, criteria = reference.partition("?")
    found = await find_conditional(tx, svc, auth, resource_type, criteria)
    if len(found) != 1:
        raise PreconditionFailed(
            f"conditional reference {reference!r} matched {len(found)} resources, not one"
        )
    return f"{resource_type}/{found[0].id}"


async def transaction(svc: Services, auth: AuthContext, body: dict[str, Any]) -> dict[str, Any]:
    """Process a transaction Bundle; raises (and writes nothing) if any entry fails."""
    entries = _parse_entries(body, svc)
    ordered = sorted(entries, key=lambda e: (_ORDER[e.method], e.index))
    prepared: _Prepared | None = None
    try:
        async with svc.store.transaction() as tx:
            mapping = await _resolve_ids(tx, svc, auth, ordered)

            async def conditional(reference: str) -> str:
                return await _resolve_conditional_reference(tx, svc, auth, reference)

            for entry in ordered:
                if entry.resource is not None:
                    entry.resource = await rewrite_references(entry.resource, mapping, conditional)
            # references are final now, so the index can be extracted ahead, in parallel
            prepared = _prepare(svc, ordered)
            touched: dict[str, int] = {}
            for entry in ordered:
                work = _run_exclusive(tx, svc, auth, entry, touched, prepared)
                entry.response = await _guarded(entry, work)
    finally:
        if prepared is not None:
            prepared.cancel()
    results = [e.response for e in sorted(ordered, key=lambda e: e.index)]
    return bundle("transaction-response", results, timestamp=format_instant(svc.clock()))


class _Prepared:
    """The create and update entries' resources, validated and indexed in worker
    processes (``WorkerPool.prepare``) while earlier entries are written; an
    entry waits only for its own chunk. Nothing commits before every entry ran,
    and an invalid resource fails its entry, so none commits unchecked."""

    def __init__(self, svc: Services, entries: list[Entry]) -> None:
        for position, entry in enumerate(entries):
            entry.prepared_at = position
        self.chunks = svc.workers.prepare([e.resource for e in entries], svc.registry)

    async def index_of(self, entry: Entry) -> Sequence[IndexEntry] | None:
        """The entry's index; raises its validation error if its resource is invalid."""
        if entry.prepared_at is None:
            return None
        error, index = await self.chunks.get(entry.prepared_at)
        if error is not None:
            raise error
        return index

    def cancel(self) -> None:
        self.chunks.cancel()


def _prepare(svc: Services, ordered: list[Entry]) -> _Prepared:
    def plain_write(entry: Entry) -> bool:
        path, query = entry.target
        single = entry.method == "POST" and len(path) == 1
        return single or (entry.method == "PUT" and len(path) == 2 and not query)

    return _Prepared(svc, [e for e in ordered if plain_write(e)])


async def _run_exclusive(
    tx: Transaction,
    svc: Services,
    auth: AuthContext,
    entry: Entry,
    touched: dict[str, int],
    prepared: _Prepared,
) -> dict[str, Any]:
    """Run an entry, refusing a second write to a resource an earlier entry wrote:
    "If any resource identities overlap in steps 1-3, the transaction SHALL fail"."""
    result = await _run_entry(tx, svc, auth, entry, await prepared.index_of(entry))
    if entry.touched is not None:
        earlier = touched.setdefault(entry.touched, entry.index)
        if earlier != entry.index:
            raise InvalidRequest(
                f"Bundle.entry[{entry.index}] and Bundle.entry[{earlier}] both change "
                f"{entry.touched}"
            )
    return result


def _name_entry(exc: FhirError, entry: Entry) -> FhirError:
    issue = Issue(
        "error",
        exc.code,
        f"Bundle.entry[{entry.index}] ({entry.method} {entry.url}) failed",
        (f"Bundle.entry[{entry.index}]",),
    )
    exc.issues = (*exc.issues, issue)
    return exc


async def _guarded(entry: Entry, work: Any) -> dict[str, Any]:
    """Run an entry; a failure names the entry and aborts the whole transaction."""
    try:
        result: dict[str, Any] = await work
    except FhirError as exc:
        raise _name_entry(exc, entry) from None
    return result


# -- batch -----------------------------------------------------------------------------


async def batch(svc: Services, auth: AuthContext, body: dict[str, Any]) -> dict[str, Any]:
    """Process a batch Bundle: each entry on its own, each outcome reported."""
    raw = _raw_entries(body, svc)
    results = [await _batch_entry(svc, auth, i, e) for i, e in enumerate(raw)]
    return bundle("batch-response", results, timestamp=format_instant(svc.clock()))


async def _batch_entry(svc: Services, auth: AuthContext, index: int, raw: Any) -> dict[str, Any]:
    try:
        entry = _parse_entry(index, raw)
        async with svc.store.transaction() as tx:
            return await _run_entry(tx, svc, auth, entry)
    except FhirError as exc:
        return {"response": {"status": status_text(exc.status), "outcome": exc.outcome()}}
