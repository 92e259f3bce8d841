"""Fixtures shared by the whole suite: a real app on a real embedded store,
reached through the real ASGI stack."""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from fhir_server.app import create_app
from fhir_server.settings import Settings
from smart.tokens import mint_access_token
from tests.mongo_emulator import accept_bulk_sort

SHARED_FHIR = Path(__file__).resolve().parents[1].parent / "shared" / "fhir"
EXAMPLES = SHARED_FHIR / "examples"
BASE = "http://radhub.test"

MintToken = Callable[..., str]


def peer_missing(what: str) -> None:
    """A system peer is missing: skip, or fail when CI demands peers."""
    if os.environ.get("RADHUB_REQUIRE_PEERS") == "1":
        pytest.fail(f"{what} is required (RADHUB_REQUIRE_PEERS=1) but not installed")
    pytest.skip(f"{what} is not installed")


def require_peer(command: str) -> None:
    """Skip when a system peer is missing, or fail when CI demands peers."""
    if shutil.which(command) is None:
        peer_missing(command)


def require_peer_dir(directory: Path, marker: str, how: str) -> Path:
    """``directory`` when a peer that is a directory (a built web app) holds ``marker``;
    else skip, or fail when CI demands peers. ``how`` says how to get it."""
    if not (directory / marker).is_file():
        peer_missing(f"{directory / marker} ({how})")
    return directory


@pytest.fixture(autouse=True, scope="session")
def _emulator_takes_bulk_sort() -> Iterator[None]:
    """The MongoDB emulator, level with PyMongo's bulk write API (``tests/mongo_emulator``)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        accept_bulk_sort(monkeypatch)
        yield


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", base_url=BASE, audit_flush_interval=0.05, audit_process=False
    )


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


def app_token(app: FastAPI, scope: str = "system/*.cruds", **claims: object) -> str:
    """A token for ``app``, signed with its key."""
    identity = app.state.identity
    return mint_access_token(
        app.state.keyring,
        issuer=identity.issuer,
        audience=identity.audience,
        scope=scope,
        subject=str(claims.pop("subject", "tester")),
        **claims,  # type: ignore[arg-type]
    )


@pytest.fixture
def mint(app: FastAPI) -> MintToken:
    def make(scope: str = "system/*.cruds", **claims: object) -> str:
        return app_token(app, scope, **claims)

    return make


@pytest.fixture
async def anon(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield client


@pytest.fixture
async def client(app: FastAPI, mint: MintToken) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {mint()}"}
    async with httpx.AsyncClient(transport=transport, base_url=BASE, headers=headers) as c:
        yield c


@pytest.fixture
def logged(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> pytest.LogCaptureFixture:
    """Log records of WARNING and above, a uvicorn server's in this process included
    (a ``uvicorn.Config`` with its default logging, in an earlier test, stops them at
    the ``uvicorn`` logger)."""
    monkeypatch.setattr(logging.getLogger("uvicorn"), "propagate", True)
    caplog.set_level(logging.WARNING)
    return caplog
