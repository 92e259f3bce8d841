"""The DICOMweb HTTP door: PS3.18 resources mounted at ``/dicomweb`` (thin routes).

Each route names its PS3.18 transaction and hands the request to the module
that implements it; ``http_common.handle`` authenticates, maps errors and
audits. The same ingest and index services serve the DIMSE bridge.

Routes are registered per method, so the router would answer a method a path
lacks with the first route's methods; ``_Paths`` instead makes every GET
answer HEAD too (the same handler, so the same token, headers and audit, with
no body; RFC 9110 §9.3.2) and ends each path with a route answering any other
method 405 with an ``Allow`` listing all the path's methods (RFC 9110 §15.5.6).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial

from fastapi import APIRouter
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Send
from starlette.types import Scope as AsgiScope

from dicomweb import qido_rs, rendered, stow, wado, wado_bulk, wado_pixels
from dicomweb.http_common import (
    Access,
    DicomwebServices,
    Work,
    error_body,
    handle,
    require_system_delete,
    visible_study,
)
from dicomweb.qido import Level
from dicomweb.qido_compile import Scope
from dicomweb.retrievals_in_flight import retrieval
from dicomweb.transfer_syntax import prefers_bulkdata
from fhir_server.access.context import Interaction
from fhir_server.errors import NotFound

log = logging.getLogger(__name__)

STUDY = "/studies/{study}"
SERIES = STUDY + "/series/{series}"
INSTANCE = SERIES + "/instances/{instance}"


Endpoint = Callable[[Request], Awaitable[Response]]


def _uids(request: Request) -> tuple[str, str | None, str | None]:
    p = request.path_params
    return p["study"], p.get("series"), p.get("instance")


class _HeadersOnly(Response):
    """A response's status and headers (Content-Length included) without its body;
    a streamed body is closed unread."""

    def __init__(self, full: Response) -> None:
        self.status_code = full.status_code
        self.raw_headers = full.raw_headers
        self.background: BackgroundTask | None = full.background
        self._full = full

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        await send({"type": "http.response.body", "body": b""})
        close = getattr(getattr(self._full, "body_iterator", None), "aclose", None)
        if close is not None:
            await close()
        if self.background is not None:
            await self.background()


def _head(endpoint: Endpoint) -> Endpoint:
    async def head(request: Request) -> Response:
        return _HeadersOnly(await endpoint(request))

    return head


class _NotAllowed:
    """An ASGI app answering 405 with ``Allow`` (an app, not a function, so that its
    route matches every method: the path's own routes come first)."""

    def __init__(self, allowed: list[str]) -> None:
        self.allow = ", ".join(allowed)

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        text = f"{scope['method']} is not supported here; use {self.allow}"
        await error_body(405, text, {"Allow": self.allow})(scope, receive, send)


class _Paths:
    """The router's routes, path by path (see the module docstring)."""

    def __init__(self, router: APIRouter) -> None:
        self.router = router
        self.methods: dict[str, list[str]] = {}

    def add(self, path: str, endpoint: Endpoint, method: str, summary: str | None = None) -> None:
        self.router.add_api_route(path, endpoint, methods=[method], summary=summary)
        allowed = self.methods.setdefault(path, [])
        allowed.append(method)
        if method == "GET":
            head = _head(endpoint)
            self.router.add_api_route(path, head, methods=["HEAD"], include_in_schema=False)
            allowed.append("HEAD")

    def finish(self) -> None:
        """After every path's routes: the 405 for the methods none of them has."""
        for path, allowed in self.methods.items():
            endpoint = _NotAllowed(sorted(allowed))
            self.router.routes.append(Route(path, endpoint, include_in_schema=False))


def dicomweb_router(svc: DicomwebServices) -> APIRouter:
    """All DICOMweb routes over ``svc``."""
    paths = _Paths(APIRouter())
    _stow_routes(paths, svc)
    _qido_routes(paths, svc)
    _wado_routes(paths, svc)
    _pixel_routes(paths, svc)
    _delete_routes(paths, svc)
    paths.finish()
    return paths.router


def _stow_routes(router: _Paths, svc: DicomwebServices) -> None:
    async def store_instances(request: Request) -> Response:
        study = request.path_params.get("study")

        async def work(access: Access) -> Response:
            return await stow.store_instances(svc, request, access, study)

        return await handle(svc, request, "create", work, study)

    for path in ("/studies", STUDY):
        router.add(path, store_instances, "POST", summary="STOW-RS")


def _qido_routes(router: _Paths, svc: DicomwebServices) -> None:
    def search(level: Level) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            p = request.path_params
            scope = Scope(p.get("study"), p.get("series"))

            async def work(access: Access) -> Response:
                return await qido_rs.search(svc, request, access, level, scope)

            return await handle(svc, request, "search-type", work, scope.study_uid)

        return endpoint

    routes: tuple[tuple[str, Level], ...] = (
        ("/studies", "study"),
        (STUDY + "/series", "series"),
        ("/series", "series"),
        (SERIES + "/instances", "instance"),
        (STUDY + "/instances", "instance"),
        ("/instances", "instance"),
    )
    for path, level in routes:
        router.add(path, search(level), "GET", summary="QIDO-RS")


def _reading_files(svc: DicomwebServices, study: str, work: Work) -> Work:
    """``work``, which reads ``study``'s files, as a retrieval in flight: a DELETE
    leaves it the files for a while (``retrievals_in_flight``)."""

    async def held(access: Access) -> Response:
        return await retrieval(svc.retrievals, study, partial(work, access))

    return held


def _wado_routes(router: _Paths, svc: DicomwebServices) -> None:
    async def retrieve(request: Request) -> Response:
        study, series, sop = _uids(request)

        async def work(access: Access) -> Response:
            if prefers_bulkdata(request.headers.get("accept")):  # PS3.18 Table 10.4.4-1
                uids = (study, series, sop)
                return await wado_bulk.retrieve_bulkdata(svc, request, access, uids)
            return await wado.retrieve(svc, request, access, study, series, sop)

        return await handle(svc, request, "read", _reading_files(svc, study, work), study)

    async def metadata(request: Request) -> Response:
        study, series, sop = _uids(request)

        async def work(access: Access) -> Response:
            return await wado.metadata(svc, request, access, study, series, sop)

        return await handle(svc, request, "read", work, study)

    async def frames(request: Request) -> Response:
        uids = _uids(request)

        async def work(access: Access) -> Response:
            frame_list = request.path_params["frames"]
            return await wado_pixels.frames(svc, request, access, uids, frame_list)

        return await handle(svc, request, "read", _reading_files(svc, uids[0], work), uids[0])

    async def bulkdata(request: Request) -> Response:
        uids = _uids(request)

        async def work(access: Access) -> Response:
            tag_path = request.path_params["tags"]
            return await wado_pixels.bulkdata(svc, request, access, uids, tag_path)

        return await handle(svc, request, "read", _reading_files(svc, uids[0], work), uids[0])

    def bulk_resource(*, pixel_only: bool) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            uids = _uids(request)

            async def work(access: Access) -> Response:
                return await wado_bulk.retrieve_bulkdata(
                    svc, request, access, uids, pixel_only=pixel_only
                )

            return await handle(svc, request, "read", _reading_files(svc, uids[0], work), uids[0])

        return endpoint

    for path in (STUDY, SERIES, INSTANCE):
        router.add(path, retrieve, "GET", summary="WADO-RS retrieve")
        router.add(path + "/metadata", metadata, "GET", summary="metadata")
        # PS3.18 §10.4.1.1.5-6: Study, Series and Instance Bulkdata and Pixel Data
        router.add(path + "/bulkdata", bulk_resource(pixel_only=False), "GET", summary="bulk data")
        router.add(path + "/pixeldata", bulk_resource(pixel_only=True), "GET", summary="pixel data")
    router.add(INSTANCE + "/frames/{frames}", frames, "GET", summary="frames")
    router.add(INSTANCE + "/bulkdata/{tags:path}", bulkdata, "GET", summary="bulk data")


def _pixel_routes(router: _Paths, svc: DicomwebServices) -> None:
    def image(*, thumbnail: bool) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            uids = _uids(request)
            frame = request.path_params.get("frame")

            async def work(access: Access) -> Response:
                number = _frame_number(frame)
                if thumbnail:
                    return await rendered.thumbnail(svc, request, access, uids, number)
                return await rendered.rendered(svc, request, access, uids, number)

            return await handle(svc, request, "read", _reading_files(svc, uids[0], work), uids[0])

        return endpoint

    for base in (STUDY, SERIES, INSTANCE, INSTANCE + "/frames/{frame}"):
        for name, thumb in (("rendered", False), ("thumbnail", True)):
            router.add(f"{base}/{name}", image(thumbnail=thumb), "GET")

    async def wado_uri(request: Request) -> Response:
        study = request.query_params.get("studyUID")

        async def work(access: Access) -> Response:
            return await rendered.wado_uri(svc, request, access)

        # (no studyUID is a 400 before anything is read)
        return await handle(svc, request, "read", _reading_files(svc, study or "", work), study)

    router.add("/wado", wado_uri, "GET", summary="WADO-URI")


def _frame_number(text: str | None) -> int | None:
    return None if text is None else wado_pixels.frame_number(text)


def _delete_routes(router: _Paths, svc: DicomwebServices) -> None:
    async def delete(request: Request) -> Response:
        uids = study, series, sop = _uids(request)

        async def work(access: Access) -> Response:
            require_system_delete(svc, access.auth)
            # (which also records whose images they were, for the audit, before they go)
            await visible_study(svc, access, study, Interaction.DELETE)
            # no ingest into the study from reading the rows to removing their blobs
            async with svc.ingest.locks.removing(study):
                doomed = [
                    (r.study_uid, r.series_uid, r.uid)
                    for r in await svc.index.instance_files(*uids)
                ]
                async with svc.intent(doomed):  # a crash between the two leaves no orphan
                    gone = await svc.index.delete(study, series, sop)
                    if not gone.blobs:
                        raise NotFound("no such series or instance")
                    # retrievals already sending these files may finish, for a while
                    if not await svc.retrievals.settled(study, svc.delete_grace):
                        log.info("DELETE in study %s goes on past its retrievals' grace", study)
                    for blob in gone.blobs:
                        await svc.blobs.delete(blob.key)
            if svc.sync is not None:
                try:
                    await svc.sync.sync(gone.studies)
                except Exception:  # the instances are gone: say so; the sync is retried
                    log.warning("ImagingStudy of %s not yet updated after DELETE", gone.studies)
            return Response(status_code=204)

        return await handle(svc, request, "delete", work, study)

    for path in (STUDY, SERIES, INSTANCE):
        router.add(path, delete, "DELETE", summary="Delete")
