"""The FHIR REST API over HTTP: thin routes that translate headers, negotiation,
bodies and ETags, call the interactions, and audit every request.
See https://hl7.org/fhir/R4/http.html
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fhir_server.access.compartment_patients import CompartmentPatients
from fhir_server.access.context import AuthContext
from fhir_server.access.tokens import TokenVerifier, bearer_token
from fhir_server.audit import AuditRecord, AuditTrail
from fhir_server.errors import (
    FhirError,
    InvalidRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from fhir_server.http.negotiation import check_accept, check_content_type
from fhir_server.http.responses import (
    error_response,
    fhir_json,
    prefer_strict,
    unexpected_error_response,
    version_headers,
    written,
)
from fhir_server.http.route_table import FHIR_ROUTES
from fhir_server.interactions import crud, everything, history, search, transaction
from fhir_server.interactions.services import Services
from fhir_server.resources.presentation import present
from fhir_server.storage.base import StoredVersion

log = logging.getLogger(__name__)
# search parameters one POST _search form may hold (as many as Starlette's reader took)
MAX_FORM_FIELDS = 1000


@dataclass(slots=True)
class Access:
    """One request's caller and whose record it reached, for its audit record: the
    Patient is named also when the token names none (IHE BALP), so that
    ``AuditEvent?patient=`` finds every access to a patient's record. ``handle``
    makes one per request and hands it to the route's work, which fills it in.
    """

    auth: AuthContext
    # the version read, written or deleted: its Patient is found once answered,
    # and only if the token names none (``FhirHttp.patient_of``)
    shown: StoredVersion | None = None
    # the Patient a search, a history or ``$everything`` asked for
    patient: str | None = None


Work = Callable[[Access], Awaitable[Response]]


def created_id(location: str | None, resource_type: str | None) -> str | None:
    """The id in a create's ``Location`` (``[base]/[type]/[id]/_history/[vid]``)."""
    if location is None or resource_type is None:
        return None
    parts = location.rstrip("/").split("/")
    if len(parts) >= 4 and parts[-2] == "_history" and parts[-4] == resource_type:
        return parts[-3]
    return None


class FhirHttp:
    """Holds what the routes need; ``router()`` returns the mounted routes."""

    def __init__(
        self,
        svc: Services,
        verifier: TokenVerifier,
        audit: AuditTrail,
        capability: Callable[[], dict[str, Any]],
    ) -> None:
        self.svc = svc
        self.verifier = verifier
        self.audit = audit
        self.capability = capability
        self.patients = CompartmentPatients.build(svc.policy.compartment, svc.registry)

    # -- plumbing ---------------------------------------------------------------------

    async def handle(
        self,
        request: Request,
        interaction: str,
        work: Work,
        resource_type: str | None = None,
        id: str | None = None,
    ) -> Response:
        """Negotiate, authenticate, run, map errors, audit."""
        access: Access | None = None
        pretty = request.query_params.get("_pretty") == "true"
        try:
            check_accept(request)
            token = bearer_token(request.headers.get("authorization"))
            access = Access(await self.verifier.verify(token))
            response = await work(access)
        except FhirError as exc:
            response = error_response(exc, pretty=pretty)
        except Exception:
            log.exception("unexpected error in %s %s", request.method, request.url.path)
            response = unexpected_error_response()
        query = request.scope["query_string"].decode("utf-8", "replace") or None
        client = request.scope.get("client")
        status = response.status_code
        if id is None and status == 201:  # the AuditEvent names what was created
            id = created_id(response.headers.get("location"), resource_type)
        auth = access.auth if access is not None else None
        patient = None
        if access is not None and not access.auth.patient:  # (else the token's is named)
            patient = self.patient_of(access.auth, access.shown) or access.patient
        await self.audited(interaction, status, auth, resource_type, id, query, client, patient)
        return response

    def patient_of(self, auth: AuthContext | None, version: StoredVersion | None) -> str | None:
        """The Patient whose record ``version`` is, for the audit record, when the
        token does not name one (a patient token's patient is named anyway) and the
        resource is not that Patient."""
        if version is None or version.body is None or (auth is not None and auth.patient):
            return None
        if version.resource_type not in self.patients.routes:
            # never in a compartment, or a Patient: the event's entity names it already,
            # and ``AuditEvent?patient=`` finds it by that (a second entity would cost
            # every Patient read its index entries)
            return None
        return self.patients.patient_of(version.resource_type, orjson.loads(version.body))

    async def audited(
        self,
        interaction: str,
        status: int,
        auth: AuthContext | None,
        resource_type: str | None,
        id: str | None,
        query: str | None,
        client: tuple[str, int] | None,
        patient: str | None = None,
    ) -> None:
        """Record one answered request in the audit trail (and wait if it lags)."""
        self.audit.record(
            AuditRecord(
                interaction=interaction,
                status=status,
                moment=self.svc.clock(),
                auth=auth,
                resource_type=resource_type,
                resource_id=id,
                query=query,
                address=client[0] if client else None,
                patient=patient,
            )
        )
        await self.audit.room()

    async def body(self, request: Request, *, patch: bool = False) -> Any:
        """The request's JSON body, within the size limit."""
        check_content_type(request, patch=patch)
        try:
            return orjson.loads(await self.bounded_body(request))
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"the body is not valid JSON: {exc}") from None

    async def bounded_body(self, request: Request) -> bytes:
        """The request's body, refused (413) past ``max_body_bytes``."""
        limit = self.svc.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"the body exceeds {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the body exceeds {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def search_form(self, request: Request) -> list[tuple[str, str]]:
        """A POST _search body's parameters, read within the body's size limit:
        Starlette's form reader held up to 1000 fields of 1 MiB each (a GiB)."""
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "application/x-www-form-urlencoded":
            raise UnsupportedMediaType("POST _search takes application/x-www-form-urlencoded")
        text = (await self.bounded_body(request)).decode("latin-1")  # percent-escapes are ASCII
        try:
            return parse_qsl(
                text, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS, errors="replace"
            )
        except ValueError as exc:
            raise InvalidRequest(f"the search form cannot be read: {exc}") from None

    def shown(self, request: Request, access: Access, version: StoredVersion) -> Response:
        """A read result, or 304 when the client's copy is current."""
        access.shown = version
        headers = version_headers(version)
        if _not_modified(request, version):
            return Response(status_code=304, headers=headers)
        pretty = request.query_params.get("_pretty") == "true"
        body: Any = version.body
        if pretty or "_summary" in request.query_params or "_elements" in request.query_params:
            elements = tuple(
                e.strip() for e in request.query_params.get("_elements", "").split(",") if e
            )
            body = present(
                orjson.loads(version.body or b"{}"),
                summary=request.query_params.get("_summary"),
                elements=elements,
            )
        return fhir_json(body, 200, headers, pretty=pretty)

    # -- routes -----------------------------------------------------------------------

    def routes(self, prefix: str) -> list[Route]:
        """Plain Starlette routes from ``FHIR_ROUTES`` (FastAPI's dependency machinery
        would cost more than a whole read; the OpenAPI paths come from the same table)."""
        return [
            Route(prefix + spec.path, self._endpoint(spec.handler), methods=[spec.method])
            for spec in FHIR_ROUTES
        ]

    def _endpoint(self, name: str) -> Callable[[Request], Awaitable[Response]]:
        handler = getattr(self, name)

        async def endpoint(request: Request) -> Response:
            response: Response = await handler(request, **request.path_params)
            return response

        return endpoint

    async def metadata(self, request: Request) -> Response:
        try:
            check_accept(request)
        except FhirError as exc:
            return error_response(exc)
        return fhir_json(self.capability(), pretty=request.query_params.get("_pretty") == "true")

    async def read(self, request: Request, resource_type: str, id: str) -> Response:
        async def work(access: Access) -> Response:
            outcome = await crud.read(self.svc, access.auth, resource_type, id)
            assert outcome.version is not None
            return self.shown(request, access, outcome.version)

        return await self.handle(request, "read", work, resource_type, id)

    async def vread(
        self, request: Request, resource_type: str, id: str, version_id: str
    ) -> Response:
        async def work(access: Access) -> Response:
            outcome = await crud.vread(self.svc, access.auth, resource_type, id, version_id)
            assert outcome.version is not None
            return self.shown(request, access, outcome.version)

        return await self.handle(request, "vread", work, resource_type, id)

    async def create(self, request: Request, resource_type: str) -> Response:
        async def work(access: Access) -> Response:
            resource = await self.body(request)
            _check_body_type(resource, resource_type)
            outcome = await crud.create(
                self.svc, access.auth, resource, if_none_exist=request.headers.get("if-none-exist")
            )
            return self._written(request, access, outcome)

        return await self.handle(request, "create", work, resource_type)

    async def update(self, request: Request, resource_type: str, id: str) -> Response:
        async def work(access: Access) -> Response:
            resource = await self.body(request)
            outcome = await crud.update(
                self.svc,
                access.auth,
                resource_type,
                id,
                resource,
                if_match=request.headers.get("if-match"),
            )
            return self._written(request, access, outcome)

        return await self.handle(request, "update", work, resource_type, id)

    async def conditional_update(self, request: Request, resource_type: str) -> Response:
        async def work(access: Access) -> Response:
            resource = await self.body(request)
            outcome = await crud.conditional_update(
                self.svc, access.auth, resource_type, _criteria(request), resource
            )
            return self._written(request, access, outcome)

        return await self.handle(request, "update", work, resource_type)

    async def patch(self, request: Request, resource_type: str, id: str) -> Response:
        async def work(access: Access) -> Response:
            operations = await self.body(request, patch=True)
            outcome = await crud.patch(
                self.svc,
                access.auth,
                resource_type,
                id,
                operations,
                if_match=request.headers.get("if-match"),
            )
            return self._written(request, access, outcome)

        return await self.handle(request, "patch", work, resource_type, id)

    async def delete(self, request: Request, resource_type: str, id: str) -> Response:
        async def work(access: Access) -> Response:
            outcome = await crud.delete(self.svc, access.auth, resource_type, id)
            access.shown = outcome.deleted  # whose record it was
            headers = {"ETag": f'W/"{outcome.version.version}"'} if outcome.version else {}
            return Response(status_code=204, headers=headers)

        return await self.handle(request, "delete", work, resource_type, id)

    async def conditional_delete(self, request: Request, resource_type: str) -> Response:
        async def work(access: Access) -> Response:
            outcome = await crud.conditional_delete(
                self.svc, access.auth, resource_type, _criteria(request)
            )
            access.shown = outcome.deleted  # whose record it was
            return Response(status_code=204)

        return await self.handle(request, "delete", work, resource_type)

    async def instance_history(self, request: Request, resource_type: str, id: str) -> Response:
        return await self._history(request, "history-instance", resource_type, id)

    async def type_history(self, request: Request, resource_type: str) -> Response:
        return await self._history(request, "history-type", resource_type, None)

    async def system_history(self, request: Request) -> Response:
        return await self._history(request, "history-system", None, None)

    async def _history(
        self, request: Request, interaction: str, resource_type: str | None, id: str | None
    ) -> Response:
        async def work(access: Access) -> Response:
            params = list(request.query_params.multi_items())
            if resource_type == "Patient" and id is not None:
                access.patient = id  # whose record's history it is
            result = await history.history(self.svc, access.auth, resource_type, id, params)
            return fhir_json(result, pretty=request.query_params.get("_pretty") == "true")

        return await self.handle(request, interaction, work, resource_type, id)

    async def type_search(self, request: Request, resource_type: str) -> Response:
        params = list(request.query_params.multi_items())
        return await self._search(request, "search-type", resource_type, params)

    async def type_search_post(self, request: Request, resource_type: str) -> Response:
        async def work(access: Access) -> Response:
            params = [*request.query_params.multi_items(), *await self.search_form(request)]
            access.patient = self.patients.patient_asked_for(resource_type, params)
            result = await search.search(
                self.svc, access.auth, resource_type, params, strict=prefer_strict(request)
            )
            return fhir_json(result)

        return await self.handle(request, "search-type", work, resource_type)

    async def system_search(self, request: Request) -> Response:
        params = list(request.query_params.multi_items())
        return await self._search(request, "search-system", None, params)

    async def compartment_search(
        self, request: Request, resource_type: str, id: str, compartment_type: str
    ) -> Response:
        async def work(access: Access) -> Response:
            if resource_type != "Patient":
                raise InvalidRequest(f"{resource_type} compartments are not supported")
            access.patient = id  # whose record is searched
            params = list(request.query_params.multi_items())
            result = await search.search(
                self.svc,
                access.auth,
                compartment_type,
                params,
                strict=prefer_strict(request),
                compartment=id,
                self_path=f"Patient/{id}/{compartment_type}",
            )
            return fhir_json(result, pretty=request.query_params.get("_pretty") == "true")

        return await self.handle(request, "search-compartment", work, compartment_type)

    async def patient_everything(self, request: Request, id: str) -> Response:
        """See https://hl7.org/fhir/R4/patient-operation-everything.html"""

        async def work(access: Access) -> Response:
            access.patient = id  # whose record it is
            params = list(request.query_params.multi_items())
            result = await everything.everything(self.svc, access.auth, id, params)
            return fhir_json(result, pretty=request.query_params.get("_pretty") == "true")

        return await self.handle(request, "operation", work, "Patient", id)

    async def _search(
        self,
        request: Request,
        interaction: str,
        resource_type: str | None,
        params: list[tuple[str, str]],
    ) -> Response:
        async def work(access: Access) -> Response:
            access.patient = self.patients.patient_asked_for(resource_type, params)
            result = await search.search(
                self.svc, access.auth, resource_type, params, strict=prefer_strict(request)
            )
            return fhir_json(result, pretty=request.query_params.get("_pretty") == "true")

        return await self.handle(request, interaction, work, resource_type)

    async def bundle(self, request: Request) -> Response:
        async def work(access: Access) -> Response:
            body = await self.body(request)
            if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
                raise InvalidRequest("POST to the base takes a Bundle")
            kind = body.get("type")
            if kind == "transaction":
                result = await transaction.transaction(self.svc, access.auth, body)
            elif kind == "batch":
                result = await transaction.batch(self.svc, access.auth, body)
            else:
                raise InvalidRequest(f"Bundle.type must be batch or transaction, not {kind!r}")
            return fhir_json(result)

        return await self.handle(request, "transaction", work)

    def _written(self, request: Request, access: Access, outcome: crud.Outcome) -> Response:
        access.shown = outcome.version
        return written(
            request,
            self.svc.base_url,
            outcome.status,
            outcome.version,
            outcome.issues,
            created=outcome.created,
        )


def _criteria(request: Request) -> str:
    query = str(request.url.query)
    if not query:
        raise InvalidRequest("a conditional interaction needs search criteria")
    return query


def _check_body_type(resource: Any, resource_type: str) -> None:
    crud.check_type(resource_type)
    body_type = resource.get("resourceType") if isinstance(resource, dict) else None
    if body_type != resource_type:
        raise InvalidRequest(f"the body is a {body_type}, the URL names a {resource_type}")


def _not_modified(request: Request, version: StoredVersion) -> bool:
    """Conditional read. See https://hl7.org/fhir/R4/http.html#cread"""
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        tags = {t.strip().removeprefix("W/").strip('"') for t in if_none_match.split(",")}
        return str(version.version) in tags or "*" in tags
    since = request.headers.get("if-modified-since")
    if since is not None:
        try:
            moment = parsedate_to_datetime(since)
        except (TypeError, ValueError):
            return False
        if moment.tzinfo is None:  # "-0000" (RFC 5322 §3.3): UTC, no zone given
            moment = moment.replace(tzinfo=UTC)
        return version.last_updated.replace(microsecond=0) <= moment
    return False
