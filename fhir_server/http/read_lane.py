"""The plain read's short lane: ``GET [base]/[type]/[id]`` answered from ASGI.

Reading one resource is what viewers, portals and SMART apps do most, and
Starlette's request, routing, response, CORS and metrics layers cost several
times what the read itself does. This lane answers the plain case straight
from the ASGI scope, with the same token check, policy, store read and audit
record as the route (through the same functions), the metrics the middleware
would count, and the headers the route and the CORS middleware would send.
Everything else goes to the routes unchanged: a query string (``_format``,
``_summary``, ``_elements``, ``_pretty``), a conditional read, a browser's
``Origin``, an ``Accept`` it would refuse, a path that is not a read, and any
error. The route then answers and audits it as it always has: the lane has
done nothing visible by then (verifying a token and reading have no effects),
so an error costs only the repeated work.
``tests/fhir_server/test_read_lane.py`` checks that its answers are byte for
byte the route's.
"""

from __future__ import annotations

import re
import time

from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from fhir_server.access.tokens import bearer_token
from fhir_server.http.metrics import HttpMetrics, route_label
from fhir_server.http.negotiation import accepts_json
from fhir_server.http.responses import FHIR_JSON_UTF8, version_headers
from fhir_server.http.route_table import FHIR_ROUTES
from fhir_server.http.routes import FhirHttp
from fhir_server.interactions import crud
from fhir_server.storage.base import StoredVersion

# https://hl7.org/fhir/R4/datatypes.html#id: anything else is for the route to refuse
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# GET routes of the form /{resource_type}/<literal> (``_history``) come before the read
_NOT_IDS = frozenset(
    spec.path.rsplit("/", 1)[1]
    for spec in FHIR_ROUTES
    if spec.method == "GET"
    and spec.path.startswith("/{resource_type}/")
    and spec.path.count("/") == 2
    and "{" not in spec.path.rsplit("/", 1)[1]
)
# request headers that change the answer: the route (and CORS) deal with them
_FOR_THE_ROUTE = frozenset({b"if-none-match", b"if-modified-since", b"origin"})
_CONTENT_TYPE = FHIR_JSON_UTF8.encode("latin-1")


class ReadLane:
    """Answers plain reads, passes everything else to ``app`` (module docstring).
    ``app`` is the FHIR lane with its CORS and metrics middleware."""

    def __init__(
        self,
        app: ASGIApp,
        fhir: FhirHttp,
        prefix: str,
        read_route: BaseRoute,
        metrics: HttpMetrics,
    ) -> None:
        self.app = app
        self.fhir = fhir
        self.prefix = prefix + "/"
        self.depth = prefix.count("/") + 3  # split parts of [prefix]/[type]/[id]
        label = route_label(read_route)
        self.count = metrics.requests.labels("GET", label, "200")
        self.latency = metrics.latency.labels("GET", label)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        target = self._target(scope)
        if target is None or not await self._answer(send, scope.get("client"), *target):
            await self.app(scope, receive, send)
            return
        self.count.inc()
        self.latency.observe(time.perf_counter() - started)

    def _target(self, scope: Scope) -> tuple[str, str, str | None] | None:
        """(type, id, Authorization) when the request is a plain read, else None."""
        path: str = scope["path"]
        if scope["method"] != "GET" or scope["query_string"] or not path.startswith(self.prefix):
            return None
        parts = path.split("/")
        if len(parts) != self.depth:
            return None
        resource_type, id = parts[-2], parts[-1]
        if id in _NOT_IDS or not _FHIR_ID.fullmatch(id):
            return None
        authorization: str | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                if authorization is not None:
                    return None  # two: which one counts is the route's to say
                authorization = value.decode("latin-1")
            elif name in _FOR_THE_ROUTE:
                return None
            elif name == b"accept" and not accepts_json(value.decode("latin-1")):
                return None
        return resource_type, id, authorization

    async def _answer(
        self,
        send: Send,
        client: tuple[str, int] | None,
        resource_type: str,
        id: str,
        authorization: str | None,
    ) -> bool:
        """Answer the read and return True, or return False having sent nothing."""
        fhir = self.fhir
        try:
            auth = await fhir.verifier.verify(bearer_token(authorization))
            version = (await crud.read(fhir.svc, auth, resource_type, id)).version
        except Exception:
            return False  # the route answers (and audits) it
        if version is None or version.body is None:
            return False
        # before answering, as the route does: waiting for room in the audit trail
        # must hold back this client's next request, not run beside it
        patient = fhir.patient_of(auth, version)
        await fhir.audited("read", 200, auth, resource_type, id, None, client, patient)
        await send({"type": "http.response.start", "status": 200, "headers": _headers(version)})
        await send({"type": "http.response.body", "body": version.body})
        return True


def _headers(version: StoredVersion) -> list[tuple[bytes, bytes]]:
    """What the route sends: ``version_headers``, length and type (Starlette's
    Response), then ``Vary: Origin`` (Starlette's CORS middleware, on every answer)."""
    headers = [(k.lower().encode(), v.encode()) for k, v in version_headers(version).items()]
    headers += [
        (b"content-length", str(len(version.body or b"")).encode()),
        (b"content-type", _CONTENT_TYPE),
        (b"vary", b"Origin"),
    ]
    return headers
