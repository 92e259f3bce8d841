"""The verifier's revocation check, with a short memory.

Asking the store on every request would add a database round trip to every
FHIR read; a token's verdict is remembered for ``ttl`` seconds instead (one
lookup per token per second under load). A revocation made through this process
forgets every remembered verdict at once; one made by another process sharing
the store takes effect within ``ttl`` seconds.
"""

from __future__ import annotations

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

    async def __call__(self, jti: str) -> bool:
        now = self._clock()
        if self._auth.revocations != self._generation:
            self._generation = self._auth.revocations
            self._seen.clear()
        hit = self._seen.get(jti)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        revoked = await self._auth.is_revoked(jti)
        self._seen[jti] = (now, revoked)
        self._seen.move_to_end(jti)
        while len(self._seen) > self._size:
            self._seen.popitem(last=False)
        return revoked
