"""Prometheus metrics for HTTP: request counts and latency by method, route and status.

A plain ASGI middleware (not Starlette's BaseHTTPMiddleware, which costs a task
and a stream copy per request) so measuring does not slow what it measures.
``metrics_endpoint`` serves ``/metrics`` to a bearer of a valid token; a refused
request is audited like any refusal, a scrape that succeeds is not (one every
few seconds would drown the trail, and metrics hold no patient data).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhir_server.access.tokens import TokenVerifier, bearer_token
from fhir_server.audit import AuditRecord, AuditTrail
from fhir_server.errors import FhirError
from fhir_server.interactions.services import utc_now


class HttpMetrics:
    """The HTTP metric families, registered in one (non-global) registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "radhub_http_requests_total",
            "HTTP requests by method, route and status",
            ("method", "route", "status"),
            registry=registry,
        )
        self.latency = Histogram(
            "radhub_http_request_seconds",
            "HTTP request latency by method and route",
            ("method", "route"),
            registry=registry,
        )


class MetricsMiddleware:
    """Counts and times every HTTP request."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = _route_of(scope)
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)


def _route_of(scope: Scope) -> str:
    return route_label(scope.get("route"))


def route_label(route: object) -> str:
    """A route's label: its template keeps the label set small (no ids in labels)."""
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return str(path) if path else "unmatched"


def metrics_endpoint(
    registry: CollectorRegistry, verifier: TokenVerifier, audit: AuditTrail
) -> Callable[[Request], Awaitable[Response]]:
    """The ``/metrics`` handler: the registry in Prometheus text format, for a valid token."""

    async def metrics(request: Request) -> Response:
        try:
            await verifier.verify(bearer_token(request.headers.get("authorization")))
        except FhirError as exc:
            address = request.client.host if request.client else None
            audit.record(
                AuditRecord(
                    "metrics",
                    exc.status,
                    utc_now(),
                    None,
                    address=address,
                    description=exc.diagnostics,
                )
            )
            raise
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return metrics
