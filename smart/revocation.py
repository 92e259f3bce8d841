"""The verifier's revocation check, with a short memory.

Asking the store on every request would add a database round trip to every
FHIR read; a token's verdict is remembered for ``ttl`` seconds instead (one
lookup per token per second under load). A revocation made through this process
forgets every remembered verdict at once; one made by another process sharing
the store takes effect within ``ttl`` seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Protocol

from smart.keys import Clock


class RevocationSource(Protocol):
    """The part of the auth store the check needs."""

    async def is_revoked(self, jti: str) -> bool: ...

    @property
    def revocations(self) -> int: ...


class CachedRevocationCheck:
    """``await check(jti)``: whether the token was revoked, at most ``ttl`` s stale."""

    def __init__(
        self,
        auth: RevocationSource,
        *,
        ttl: float = 1.0,
        size: int = 8192,
        clock: Clock = time.monotonic,
    ) -> None:
        self._auth = auth
        self._generation = auth.revocations
        self._ttl = ttl
        self._size = size
        self._clock = clock
        self._seen: OrderedDict[str, tuple[float, bool]] = OrderedDict()
        self._pending: dict[str, asyncio.Future[bool]] = {}

    async def __call__(self, jti: str) -> bool:
        now = self._clock()
        if self._auth.revocations != self._generation:
            self._generation = self._auth.revocations
            self._seen.clear()
            self._pending.clear()  # a lookup begun before the revocation may be stale
        hit = self._seen.get(jti)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        # one lookup per token at a time: when a verdict expires under load, every
        # request in flight with that token would otherwise ask the store at once
        generation = self._generation
        pending = self._pending.get(jti)
        if pending is None:
            pending = asyncio.ensure_future(self._auth.is_revoked(jti))
            self._pending[jti] = pending
            pending.add_done_callback(lambda done: self._forget(jti, done))
        revoked = await asyncio.shield(pending)
        if generation != self._auth.revocations:
            return revoked  # a revocation came while asking: do not remember this verdict
        self._seen[jti] = (now, revoked)
        self._seen.move_to_end(jti)
        while len(self._seen) > self._size:
            self._seen.popitem(last=False)
        return revoked

    def _forget(self, jti: str, done: asyncio.Future[bool]) -> None:
        if self._pending.get(jti) is done:
            del self._pending[jti]
