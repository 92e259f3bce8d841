"""QIDO-RS over HTTP: the six search resources (PS3.18 §10.6).

``/studies``, ``/studies/{study}/series``, ``/series``,
``/studies/{study}/series/{series}/instances``, ``/studies/{study}/instances``
and ``/instances``. Answers are ``application/dicom+json`` arrays (200 with
``[]`` when nothing matches), or, when the client prefers it,
``multipart/related; type="application/dicom+xml"`` with one Native DICOM Model
document per result (PS3.18 §10.6.3.3.1; no part when nothing matches), with
the same status and headers; ignored parameters and a result set cut at the
server's maximum are reported in ``Warning: 299`` headers (PS3.18 §8.3.4.4,
§10.6.3.2); a patient-context token only ever matches its patient's studies,
inside the index query. The ``accept`` query parameter, when present, stands
for the Accept header (PS3.18 §8.3.3.1). A search within one study that found
something in it is audited under that study's Patient, from the rows it found;
one across studies names none.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from urllib.parse import urlsplit

import orjson
from starlette.requests import Request
from starlette.responses import Response

from dicomweb.dicom_xml import DICOM_XML, xml_parts
from dicomweb.http_common import (
    DICOM_JSON,
    Access,
    DatasetMedia,
    DicomwebServices,
    dataset_media,
    study_scope,
)
from dicomweb.multipart import new_boundary, related_content_type
from dicomweb.qido import Level, parse_qido
from dicomweb.qido_compile import Scope, compile_query, result_json, result_shape
from dicomweb.warning_headers import warning_header
from fhir_server.access.context import Interaction
from fhir_server.storage.dicom_port import Json

TOO_MANY = (
    "The number of results exceeded the maximum supported by the server. "
    "Additional results can be requested."
)


def _scope_level(scope: Scope) -> Level | None:
    if scope.series_uid is not None:
        return "series"
    return "study" if scope.study_uid is not None else None


async def search(
    svc: DicomwebServices, request: Request, access: Access, level: Level, scope: Scope
) -> Response:
    """Search for studies, series or instances (PS3.18 §10.6.1)."""
    media = dataset_media(request, "search results")
    patients = await study_scope(svc, access.auth, Interaction.SEARCH)
    params = list(request.query_params.multi_items())
    query = parse_qido(level, params, scope=_scope_level(scope), max_limit=svc.max_results)
    compiled = replace(compile_query(query, scope, None), patient_refs=patients)
    page = await svc.index.search(compiled)
    if scope.study_uid is not None and page.matches:
        access.reached(page.matches[0].study)  # (an empty answer showed nothing of it)
    shape = result_shape(query)
    results = [result_json(query, m, svc.base_url, shape) for m in page.matches]
    response = await _encoded(results, media)
    for text in query.warnings:
        response.headers.append("Warning", warning_header(text))
    if page.more and query.limit >= svc.max_results:
        # cut at the server's maximum, not at a smaller limit the client asked for
        agent = f"{urlsplit(svc.base_url).hostname or 'radhub'}:"
        response.headers.append("Warning", warning_header(TOO_MANY, agent))
    return response


async def _encoded(results: list[Json], media: DatasetMedia) -> Response:
    """The results as a JSON array, or as XML parts (PS3.18 §10.6.3.3): written in a
    thread, as a page of full instance headers takes the pure-Python writer ~1 s."""
    if media == "json":
        return Response(orjson.dumps(results), media_type=DICOM_JSON)
    boundary = new_boundary()
    body = await asyncio.to_thread(b"".join, xml_parts(results, boundary))
    return Response(body, media_type=related_content_type(boundary, DICOM_XML))
