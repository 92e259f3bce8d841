"""``radhub serve``: bind the listeners, start the app, say when each is ready."""

from __future__ import annotations

import asyncio
import logging
import sys

import uvicorn

from fhir_server import heap
from fhir_server.app import create_app
from fhir_server.cli import bind_socket
from fhir_server.demo import load_demo
from fhir_server.http.coalesced_writes import CoalescingHttpToolsProtocol
from fhir_server.settings import Settings


def _fail(message: str) -> int:
    print(f"radhub: {message}", file=sys.stderr)
    return 2


async def serve(settings: Settings, *, demo: bool = False) -> int:
    """Run until interrupted; non-zero with a clear message if a port is taken or
    the data dir is unusable."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        sock = bind_socket(settings.host, settings.port)
    except OSError as exc:
        return _fail(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}")
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        http=CoalescingHttpToolsProtocol,  # one send per small response, not two
        log_level="warning",
        access_log=False,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        server_header=False,
    )
    server = uvicorn.Server(config)
    announce = asyncio.create_task(_announce(server, settings, app, demo))
    try:
        await server.serve(sockets=[sock])
    finally:
        announce.cancel()
    return 0 if server.started else 1


async def _announce(server: uvicorn.Server, settings: Settings, app: object, demo: bool) -> None:
    while not server.started:
        await asyncio.sleep(0.02)
    services = app.state.services  # type: ignore[attr-defined]
    services.workers.warm(services.registry)
    if demo:
        loaded = await load_demo(app.state.services)  # type: ignore[attr-defined]
        if loaded:
            print(f"radhub: loaded {loaded} demo resources", flush=True)
    heap.settle()
    print(f"radhub: FHIR/HTTP listening on {settings.public_base}/fhir", flush=True)
    for name, port in (("DICOM DIMSE", settings.dicom_port), ("HL7 MLLP", settings.mllp_port)):
        if port:
            print(f"radhub: {name} on port {port} is not available in this version", flush=True)
