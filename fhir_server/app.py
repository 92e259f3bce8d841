"""The composition root: ``create_app(settings)`` builds the store, the search
registry, the access policy, the token verifier and the audit log, and mounts
the FHIR API and the auth endpoints. Nothing else wires things together.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from prometheus_client import CollectorRegistry
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from dicomweb.records import rekey_index
from dicomweb.routes import dicomweb_router
from dicomweb.wiring import WORKER_MODULES, dicomweb_archive
from fhir_server.access import AccessPolicy, PatientCompartment
from fhir_server.audit import AuditLog, AuditTrail
from fhir_server.audit_lock import ChainLock
from fhir_server.audit_process import AuditProcess
from fhir_server.errors import FhirError, StorageUnavailable
from fhir_server.http.fast_lane import RadhubApp, fhir_router
from fhir_server.http.metrics import HttpMetrics, MetricsMiddleware, metrics_endpoint
from fhir_server.http.read_lane import ReadLane
from fhir_server.http.responses import error_response
from fhir_server.http.route_table import FHIR_ROUTES, openapi_paths
from fhir_server.http.routes import FhirHttp
from fhir_server.http.security_headers import SecurityHeaders
from fhir_server.interactions.capability import capability_statement
from fhir_server.interactions.services import Limits, Services, new_uuid, utc_now
from fhir_server.resources.meta import format_instant
from fhir_server.resources.worker_pool import WorkerPool
from fhir_server.search.registry import SearchRegistry
from fhir_server.settings import Settings
from fhir_server.storage.base import Store
from fhir_server.storage.factory import build_store
from smart.config import AuthConfig
from smart.discovery import oauth_uris
from smart.jwks_fetch import HttpJwksFetcher
from smart.keys import KeyRing
from smart.revocation import CachedRevocationCheck
from smart.server import AuthServer
from smart.tokens import JwtTokenVerifier

log = logging.getLogger(__name__)

SERVER_FILE = "server.json"


@dataclass(frozen=True)
class ServerIdentity:
    """Where tokens for this server must point; written to the data dir so the admin
    commands (``radhub token``) mint tokens the running server accepts."""

    issuer: str
    audience: str

    @classmethod
    def of(cls, settings: Settings) -> ServerIdentity:
        return cls(issuer=f"{settings.public_base}/auth", audience=settings.fhir_base)

    def save(self, data_dir: Path) -> None:
        path = data_dir / SERVER_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"issuer": self.issuer, "audience": self.audience}))
        tmp.replace(path)

    @classmethod
    def load(cls, data_dir: Path, fallback: Settings) -> ServerIdentity:
        try:
            raw = json.loads((data_dir / SERVER_FILE).read_text())
            return cls(issuer=raw["issuer"], audience=raw["audience"])
        except (OSError, ValueError, KeyError):
            return cls.of(fallback)


def prepare_data_dir(settings: Settings) -> None:
    """Create the data dir (owner-only) or fail with a clear message."""
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = settings.data_dir / ".write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StorageUnavailable(f"data dir {settings.data_dir} is unusable: {exc}") from exc


def cors_options(settings: Settings) -> dict[str, Any]:
    """CORS for browser apps and viewers on other origins (errors included)."""
    return {
        "allow_origins": list(settings.cors_origins) or ["*"],
        "allow_methods": ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
        "allow_headers": [
            "Authorization",
            "Accept",
            "Content-Type",
            "If-Match",
            "If-None-Match",
            "If-None-Exist",
            "If-Modified-Since",
            "Prefer",
            # QIDO-RS clients send ``Cache-Control: no-cache`` (PS3.18 §8.3.4); a
            # preflight refusing it blocks a browser viewer outright
            "Cache-Control",
            "Range",
        ],
        "expose_headers": [
            "ETag",
            "Location",
            "Content-Location",
            "Last-Modified",
            "Warning",
            "WWW-Authenticate",
        ],
        "max_age": 600,
    }


def create_app(settings: Settings, *, store: Store | None = None) -> FastAPI:
    """Build the whole application. ``store`` overrides the configured one (tests)."""
    prepare_data_dir(settings)
    registry = SearchRegistry.load().with_base_url(settings.fhir_base)
    given_store = store is not None  # a test's: another process cannot open it
    store = store or build_store(settings, registry)
    keyring = KeyRing.open(settings.data_dir)
    identity = ServerIdentity.of(settings)
    identity.save(settings.data_dir)
    policy = AccessPolicy(PatientCompartment.load())
    svc = Services(
        store=store,
        registry=registry,
        policy=policy,
        base_url=settings.fhir_base,
        limits=Limits(max_body_bytes=settings.max_body_bytes),
        workers=WorkerPool(settings.validation_workers, preload=WORKER_MODULES),
    )
    audit: AuditTrail
    if settings.audit_process and not given_store:
        audit = AuditProcess(settings, flush_interval=settings.audit_flush_interval)
    else:
        lock = ChainLock(settings.data_dir)  # admin commands write to the chain too
        audit = AuditLog(store, new_uuid, lock, flush_interval=settings.audit_flush_interval)
    verifier = JwtTokenVerifier(
        keyring,
        identity.issuer,
        identity.audience,
        is_revoked=CachedRevocationCheck(store.auth),
    )
    auth_config = AuthConfig(
        issuer=identity.issuer,
        audience=identity.audience,
        session_idle=settings.session_idle,
        session_max=settings.session_max,
    )
    auth_server = AuthServer.build(
        auth_config, store, keyring, verifier, policy, audit, fetch_jwks=HttpJwksFetcher()
    )
    published = format_instant(utc_now())
    oauth = oauth_uris(auth_config)

    def capability() -> dict[str, Any]:
        return capability_statement(registry, settings.fhir_base, published, oauth)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await store.start()
        await dicom.reconcile()  # blobs vs index after an unclean stop
        await rekey_index(dicom.index)  # match keys of rows an older version indexed
        audit.start()
        await archive.tasks.start()
        auth_server.purge.start()
        try:
            yield
        finally:
            await auth_server.purge.stop()
            await archive.tasks.stop()
            await audit.close()
            await store.close()
            svc.workers.close()

    app = RadhubApp(
        title="radhub",
        version="0.1.0",
        summary="FHIR-native radiology server: FHIR R4, SMART on FHIR, DICOMweb",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # not served: only health, metadata and the public OAuth endpoints answer
        # without a token; the document is exported to openapi/ instead
        openapi_url=None,
        # Prometheus metrics (MetricsMiddleware) are what radhub exports; FastAPI's
        # OpenTelemetry hooks would look up providers on every request
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    http_metrics = HttpMetrics(metrics_registry := CollectorRegistry())
    cors = cors_options(settings)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(MetricsMiddleware, metrics=http_metrics)
    app.add_middleware(CORSMiddleware, **cors)
    fhir = FhirHttp(svc, verifier, audit, capability)
    app.include_router(auth_server.router())  # before the FHIR routes: smart-configuration
    fhir_routes = fhir.routes("/fhir")
    app.router.routes.extend(fhir_routes)
    read_route = next(
        r for r, spec in zip(fhir_routes, FHIR_ROUTES, strict=True) if spec.handler == "read"
    )
    lane = CORSMiddleware(MetricsMiddleware(fhir_router(fhir_routes), http_metrics), **cors)
    reads = ReadLane(lane, fhir, "/fhir", read_route, http_metrics)
    app.set_fast_lane("/fhir", SecurityHeaders(reads), bypass="/fhir/.well-known/")
    archive = dicomweb_archive(svc, verifier, audit, settings)
    dicom = archive.services
    app.include_router(dicomweb_router(dicom), prefix="/dicomweb", tags=["DICOMweb"])

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            schema["paths"] = {**openapi_paths("/fhir"), **schema.get("paths", {})}
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(FhirError)
    async def on_fhir_error(request: Request, exc: FhirError) -> Response:
        return error_response(exc)

    @app.get("/healthz", tags=["operations"], summary="Liveness and readiness")
    async def healthz() -> Response:
        ok = await store.healthy()
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "store": store.name},
            status_code=200 if ok else 503,
        )

    app.add_api_route(
        "/metrics",
        metrics_endpoint(metrics_registry, verifier, audit),
        methods=["GET"],
        tags=["operations"],
        summary="Prometheus metrics",
    )

    @app.get("/auth/jwks", tags=["auth"], summary="The server's public signing keys")
    async def jwks() -> Response:
        return JSONResponse(keyring.jwks(), headers={"Cache-Control": "max-age=300"})

    app.state.services = svc
    app.state.audit = audit
    app.state.dicomweb = dicom
    app.state.archive_tasks = archive.tasks
    app.state.keyring = keyring
    app.state.identity = identity
    return app
