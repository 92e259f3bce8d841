"""Prometheus metrics for HTTP: request counts and latency by method, route and status.

A plain ASGI middleware (not Starlette's BaseHTTPMiddleware, which costs a task
and a stream copy per request) so measuring does not slow what it measures.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send


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
    # the matched route's template keeps the label set small (no ids in labels)
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return str(path) if path else "unmatched"
