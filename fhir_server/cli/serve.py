"""``radhub serve``: bind the listeners, start the app, say when each is ready."""

from __future__ import annotations

import asyncio
import logging
import sys

import uvicorn

from dicomweb.demo_images import load_demo_images
from dicomweb.ingest import IngestService
from fhir_server import heap
from fhir_server.app import create_app
from fhir_server.cli import bind_socket
from fhir_server.demo import demo_bundle, load_demo
from fhir_server.http.limits import HttpLimits, bounded_protocol
from fhir_server.interactions.services import Services
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
    limits = HttpLimits(
        settings.http_header_limit,
        settings.http_header_timeout,
        settings.http_body_timeout,
        settings.cors_origins,
    )
    config = uvicorn.Config(
        app,
        # coalesced writes (one send per small response, not two); bounded heads and stalls
        http=bounded_protocol(limits),
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


async def _load_demo(services: Services, ingest: IngestService) -> None:
    """The demo resources, and images for its completed orders, into an empty store."""
    bundle = demo_bundle(now=services.clock())
    loaded = await load_demo(services, bundle)
    if not loaded:
        return
    print(f"radhub: loaded {loaded} demo resources", flush=True)
    try:
        images = await load_demo_images(ingest, bundle)
    except Exception as exc:  # the server is still of use without them: say so, go on
        logging.getLogger(__name__).exception("demo images not loaded")
        print(f"radhub: demo images not loaded: {exc}", file=sys.stderr, flush=True)
    else:
        print(f"radhub: loaded {images} demo DICOM instances", flush=True)


async def _announce(server: uvicorn.Server, settings: Settings, app: object, demo: bool) -> None:
    while not server.started:
        await asyncio.sleep(0.02)
    services = app.state.services  # type: ignore[attr-defined]
    services.workers.warm(services.registry)
    if demo:
        await _load_demo(services, app.state.dicomweb.ingest)  # type: ignore[attr-defined]
    heap.settle()
    print(f"radhub: FHIR/HTTP listening on {settings.public_base}/fhir", flush=True)
    for name, port in (("DICOM DIMSE", settings.dicom_port), ("HL7 MLLP", settings.mllp_port)):
        if port:
            print(f"radhub: {name} on port {port} is not available in this version", flush=True)
