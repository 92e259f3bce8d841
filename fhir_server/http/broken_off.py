"""Breaking a response off on purpose, without an error in the log.

Once a response's status and headers are sent, the only way left to tell the
client that the body will not be whole is to close the connection before the
body's end (before its Content-Length, its last chunk or, for multipart, its
close delimiter): the client then knows the body is cut off. An app that
raises out of a started response gets exactly that from uvicorn, which also
logs "Exception in ASGI application" with a traceback, as it should for a
fault; but some break-offs are expected (a DICOMweb retrieval whose study was
deleted under it) and deserve one warning, not an error.

``ResponseBrokenOff`` (in ``fhir_server.errors``, where any package may raise
it) is that case. ``BreakingOffHttpToolsProtocol`` runs each
request's app inside ``_breaks_off_quietly``, which, when the app raises it
after the response started, logs its message as one WARNING, closes the
connection (what was already written goes out first) and marks the request
disconnected, so that uvicorn's own check does not report an incomplete
response. Anything else, and a ``ResponseBrokenOff`` raised before the
response started, goes on to uvicorn's handling (a traceback and a 500).

uvicorn (0.45 on) starts every request's app, pipelined ones too, in
``HttpToolsProtocol._start_asgi_task``: the one place that has both the app
and the request's ``RequestResponseCycle``, whose ``response_started``,
``disconnected`` and transport this needs. It is uvicorn's private API, as
are the cycle's fields ``limits`` uses; ``tests/fhir_server/test_broken_off.py``
says when an upgrade changes them.

Why here, and not in an ASGI middleware: ASGI gives an app no way to close a
connection, and an app that returns without finishing its response is logged
as an error; only the protocol owns the connection. Why not a logging filter
turning uvicorn's record into a warning: that is global logging state, easily
undone by a logging configuration, rewriting records other code wrote.
Under another server (or in-process through httpx's ASGI transport) the
exception surfaces as any other: the client still sees a cut-off body.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fhir_server.errors import ResponseBrokenOff
from fhir_server.http.coalesced_writes import CoalescingHttpToolsProtocol

if TYPE_CHECKING:
    from uvicorn._types import ASGI3Application, ASGIReceiveCallable, ASGISendCallable, Scope
    from uvicorn.protocols.http.httptools_impl import RequestResponseCycle


class BreakingOffHttpToolsProtocol(CoalescingHttpToolsProtocol):
    """uvicorn's httptools protocol (with coalesced writes), ending a response quietly
    when its app raises ``ResponseBrokenOff`` after the response started."""

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        # every request's app starts here, pipelined ones included
        super()._start_asgi_task(cycle, _breaks_off_quietly(cycle, app))


def _breaks_off_quietly(cycle: RequestResponseCycle, app: ASGI3Application) -> ASGI3Application:
    async def run(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        try:
            await app(scope, receive, send)
        except ResponseBrokenOff as exc:
            if not cycle.response_started:
                raise  # nothing is sent yet: uvicorn's 500 says more than a cut-off
            client = cycle.scope.get("client")
            cycle.logger.warning("%s - response broken off: %s", client, exc)
            cycle.disconnected = True  # not "returned without completing response"
            cycle.transport.close()

    return run
