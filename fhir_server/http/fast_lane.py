"""The application class: FHIR requests take a short lane past FastAPI's stack.

FastAPI wraps every request in its own layers (server-error, telemetry, body
limit, exception and exit-stack middleware) before routing; for a small FHIR
read those layers cost about as much as the read. The FHIR routes need none of
them: they are plain Starlette routes whose handler maps every error to an
OperationOutcome itself (``FhirHttp.handle``). So ``/fhir`` requests go
straight to a router holding the same route objects, wrapped only in what every
response needs (CORS, metrics, a last-resort 500); everything else, including
SMART discovery under ``/fhir/.well-known/``, goes through FastAPI as before.
The FHIR routes stay registered on the FastAPI router too (the route guard test
and the OpenAPI export enumerate them there).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhir_server.errors import FhirError, MethodNotAllowed, NotFound
from fhir_server.http.responses import error_response, unexpected_error_response

log = logging.getLogger(__name__)

_ROUTER_ERRORS: dict[int, type[FhirError]] = {404: NotFound, 405: MethodNotAllowed}


class RadhubApp(FastAPI):
    """FastAPI with a short lane for the FHIR routes (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._lane: ASGIApp | None = None
        self._prefix = ""
        self._bypass = ""

    def set_fast_lane(self, prefix: str, lane: ASGIApp, *, bypass: str) -> None:
        """Send ``prefix`` and everything under it, except ``bypass``, to ``lane``."""
        self._prefix = prefix
        self._bypass = bypass
        self._lane = lane

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lane = self._lane
        if lane is not None and scope["type"] == "http":
            path: str = scope["path"]
            if (
                path == self._prefix or path.startswith(self._prefix + "/")
            ) and not path.startswith(self._bypass):
                scope["app"] = self
                await lane(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def fhir_router(routes: Sequence[BaseRoute]) -> ASGIApp:
    """The routes, answering an unknown FHIR path with a 404 OperationOutcome."""
    return LastResort(Router(routes=list(routes), default=_unknown_path))


async def _unknown_path(scope: Scope, receive: Receive, send: Send) -> None:
    response = error_response(NotFound(f"no FHIR interaction at {scope['path']}"))
    await response(scope, receive, send)


class LastResort:
    """An OperationOutcome for what the handlers did not answer themselves: the
    router's 405, and a 500 for an exception nothing else caught (never a bare
    connection drop); once the response has started there is nothing to fix."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except HTTPException as exc:  # the router's own 405 for a known path
            if started or exc.status_code not in _ROUTER_ERRORS:
                raise
            error = _ROUTER_ERRORS[exc.status_code](exc.detail, headers=dict(exc.headers or {}))
            await error_response(error)(scope, receive, send)
        except Exception:
            log.exception("unexpected error in %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await unexpected_error_response()(scope, receive, send)
