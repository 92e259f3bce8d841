"""The DICOMweb HTTP door: PS3.18 resources mounted at ``/dicomweb`` (thin routes).

Each route names its PS3.18 transaction and hands the request to the module
that implements it; ``http_common.handle`` authenticates, maps errors and
audits. The same ingest and index services serve the DIMSE bridge.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from dicomweb import qido_rs, rendered, stow, wado
from dicomweb.http_common import DicomwebServices, handle, require_system_delete, visible_study
from dicomweb.qido import Level
from dicomweb.qido_compile import Scope
from fhir_server.access.context import AuthContext, Interaction
from fhir_server.errors import NotFound

STUDY = "/studies/{study}"
SERIES = STUDY + "/series/{series}"
INSTANCE = SERIES + "/instances/{instance}"


def _uids(request: Request) -> tuple[str, str | None, str | None]:
    p = request.path_params
    return p["study"], p.get("series"), p.get("instance")


def dicomweb_router(svc: DicomwebServices) -> APIRouter:
    """All DICOMweb routes over ``svc``."""
    router = APIRouter()
    _stow_routes(router, svc)
    _qido_routes(router, svc)
    _wado_routes(router, svc)
    _pixel_routes(router, svc)
    _delete_routes(router, svc)
    return router


def _stow_routes(router: APIRouter, svc: DicomwebServices) -> None:
    async def store_instances(request: Request) -> Response:
        study = request.path_params.get("study")

        async def work(auth: AuthContext) -> Response:
            return await stow.store_instances(svc, request, auth, study)

        return await handle(svc, request, "create", work, study)

    for path in ("/studies", STUDY):
        router.add_api_route(path, store_instances, methods=["POST"], summary="STOW-RS")


def _qido_routes(router: APIRouter, svc: DicomwebServices) -> None:
    def search(level: Level) -> object:
        async def endpoint(request: Request) -> Response:
            p = request.path_params
            scope = Scope(p.get("study"), p.get("series"))

            async def work(auth: AuthContext) -> Response:
                return await qido_rs.search(svc, request, auth, level, scope)

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
        router.add_api_route(path, search(level), methods=["GET"], summary="QIDO-RS")  # type: ignore[arg-type]


def _wado_routes(router: APIRouter, svc: DicomwebServices) -> None:
    async def retrieve(request: Request) -> Response:
        study, series, sop = _uids(request)

        async def work(auth: AuthContext) -> Response:
            return await wado.retrieve(svc, request, auth, study, series, sop)

        return await handle(svc, request, "read", work, study)

    async def metadata(request: Request) -> Response:
        study, series, sop = _uids(request)

        async def work(auth: AuthContext) -> Response:
            return await wado.metadata(svc, request, auth, study, series, sop)

        return await handle(svc, request, "read", work, study)

    async def frames(request: Request) -> Response:
        uids = _uids(request)

        async def work(auth: AuthContext) -> Response:
            return await wado.frames(svc, request, auth, uids, request.path_params["frames"])

        return await handle(svc, request, "read", work, uids[0])

    async def bulkdata(request: Request) -> Response:
        uids = _uids(request)

        async def work(auth: AuthContext) -> Response:
            return await wado.bulkdata(svc, request, auth, uids, request.path_params["tags"])

        return await handle(svc, request, "read", work, uids[0])

    for path in (STUDY, SERIES, INSTANCE):
        router.add_api_route(path, retrieve, methods=["GET"], summary="WADO-RS retrieve")
        router.add_api_route(path + "/metadata", metadata, methods=["GET"], summary="metadata")
    router.add_api_route(INSTANCE + "/frames/{frames}", frames, methods=["GET"], summary="frames")
    router.add_api_route(
        INSTANCE + "/bulkdata/{tags:path}", bulkdata, methods=["GET"], summary="bulk data"
    )


def _pixel_routes(router: APIRouter, svc: DicomwebServices) -> None:
    def image(*, thumbnail: bool) -> object:
        async def endpoint(request: Request) -> Response:
            uids = _uids(request)
            frame = request.path_params.get("frame")

            async def work(auth: AuthContext) -> Response:
                number = _frame_number(frame)
                return await rendered.rendered(
                    svc, request, auth, uids, number, thumbnail=thumbnail
                )

            return await handle(svc, request, "read", work, uids[0])

        return endpoint

    for base in (STUDY, SERIES, INSTANCE, INSTANCE + "/frames/{frame}"):
        for name, thumb in (("rendered", False), ("thumbnail", True)):
            router.add_api_route(f"{base}/{name}", image(thumbnail=thumb), methods=["GET"])  # type: ignore[arg-type]

    async def wado_uri(request: Request) -> Response:
        study = request.query_params.get("studyUID")

        async def work(auth: AuthContext) -> Response:
            return await rendered.wado_uri(svc, request, auth)

        return await handle(svc, request, "read", work, study)

    router.add_api_route("/wado", wado_uri, methods=["GET"], summary="WADO-URI")


def _frame_number(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or int(text) < 1:
        raise NotFound(f"no frame {text!r}")
    return int(text)


def _delete_routes(router: APIRouter, svc: DicomwebServices) -> None:
    async def delete(request: Request) -> Response:
        uids = study, series, sop = _uids(request)

        async def work(auth: AuthContext) -> Response:
            require_system_delete(svc, auth)
            await visible_study(svc, auth, study, Interaction.DELETE)
            doomed = [
                (r.study_uid, r.series_uid, r.uid) for r in await svc.index.instance_files(*uids)
            ]
            async with svc.intent(doomed):  # a crash between the two leaves no orphan
                gone = await svc.index.delete(study, series, sop)
                if not gone.blobs:
                    raise NotFound("no such series or instance")
                for blob in gone.blobs:
                    await svc.blobs.delete(blob.key)
            if svc.sync is not None:
                await svc.sync.sync(gone.studies)
            return Response(status_code=204)

        return await handle(svc, request, "delete", work, study)

    for path in (STUDY, SERIES, INSTANCE):
        router.add_api_route(path, delete, methods=["DELETE"], summary="Delete")
