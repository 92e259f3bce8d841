"""Fetching a client's JWK Set from its registered ``jwks_uri``.

SMART Backend Services lets an asymmetric client publish its public keys at a
URL and rotate them there; see
https://build.fhir.org/ig/HL7/smart-app-launch/client-confidential-asymmetric.html
The fetcher guards the server that follows those URLs:

- only ``https`` URLs, or ``http`` to a loopback host (development, tests);
- short timeouts, no redirects, a size cap on the body (read as a stream);
- a set is cached per URL for ``ttl`` seconds;
- an assertion naming a ``kid`` the cached set lacks triggers a refetch (the
  client rotated its key), but at most once per ``refetch_interval`` seconds
  per URL, so assertions with made-up ``kid`` values cannot turn radhub into
  a request generator against the client's host;
- a set holding a private key (``d``) is refused.

Any failure raises ``JwksUnavailable``; the token endpoint answers
``invalid_client`` and audits the refusal.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import SplitResult, urlsplit

import httpx

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})


class JwksUnavailable(Exception):
    """The client's JWK Set could not be fetched or is not a usable public set."""


class JwksSource(Protocol):
    """What the client authenticator calls: the set at ``uri``, refreshed when it
    lacks ``kid`` (if allowed)."""

    async def __call__(self, uri: str, *, kid: str | None = None) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class _Cached:
    keys: dict[str, Any]
    fetched_at: float

    @property
    def kids(self) -> frozenset[str]:
        return frozenset(str(k.get("kid")) for k in self.keys["keys"] if isinstance(k, dict))


def split_url(uri: str) -> SplitResult:
    """``urlsplit``, and the port checked too: both raise ValueError on a malformed
    URL (``http://[::1``, a port past 65535), the port only when it is read."""
    parts = urlsplit(uri)
    _ = parts.port
    return parts


def check_jwks_uri(uri: str) -> str | None:
    """Why ``uri`` may not be fetched, or None when it may."""
    try:
        parts = split_url(uri)
    except ValueError as exc:
        return f"jwks_uri is not a URL ({exc})"
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS:
        return None
    return "jwks_uri must be https (or http on a loopback address)"


def parse_public_jwks(body: bytes) -> dict[str, Any]:
    """A JWK Set of public keys from ``body``; raises JwksUnavailable."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise JwksUnavailable("jwks_uri did not return JSON") from exc
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
        raise JwksUnavailable("jwks_uri did not return a JWK Set")
    if any("d" in key for key in keys):
        raise JwksUnavailable("jwks_uri publishes a private key")
    return {"keys": keys}


class HttpJwksFetcher:
    """Fetches and caches JWK Sets over HTTP (implements ``JwksSource``)."""

    def __init__(
        self,
        *,
        ttl: float = 300.0,
        refetch_interval: float = 10.0,
        timeout: float = 5.0,
        max_bytes: int = 64 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._refetch_interval = refetch_interval
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._clock = clock
        self._cache: dict[str, _Cached] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.fetches = 0  # requests sent, for tests and metrics

    async def __call__(self, uri: str, *, kid: str | None = None) -> dict[str, Any]:
        reason = check_jwks_uri(uri)
        if reason:
            raise JwksUnavailable(reason)
        async with self._locks.setdefault(uri, asyncio.Lock()):
            cached = self._cache.get(uri)
            if cached is None or self._stale(cached, kid):
                cached = _Cached(await self._fetch(uri), self._clock())
                self._cache[uri] = cached
            return cached.keys

    def _stale(self, cached: _Cached, kid: str | None) -> bool:
        age = self._clock() - cached.fetched_at
        if age >= self._ttl:
            return True
        return kid is not None and kid not in cached.kids and age >= self._refetch_interval

    async def _fetch(self, uri: str) -> dict[str, Any]:
        self.fetches += 1
        headers = {"Accept": "application/jwk-set+json, application/json"}
        try:
            async with (
                httpx.AsyncClient(timeout=self._timeout, follow_redirects=False) as http,
                http.stream("GET", uri, headers=headers) as response,
            ):
                if response.status_code != 200:
                    raise JwksUnavailable(f"jwks_uri answered HTTP {response.status_code}")
                body = await self._read(response)
        except httpx.HTTPError as exc:
            raise JwksUnavailable(f"jwks_uri unreachable: {type(exc).__name__}") from exc
        return parse_public_jwks(body)

    async def _read(self, response: httpx.Response) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self._max_bytes:
                raise JwksUnavailable(f"jwks_uri body exceeds {self._max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
