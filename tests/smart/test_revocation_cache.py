from __future__ import annotations

import asyncio

from smart.revocation import CachedRevocationCheck


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Auth:
    """Revocations by "another process" go to ``revoked`` only; local ones count."""

    def __init__(self) -> None:
        self.revoked: set[str] = set()
        self.asked: list[str] = []
        self.revocations = 0

    async def is_revoked(self, jti: str) -> bool:
        self.asked.append(jti)
        return jti in self.revoked

    def revoke_here(self, jti: str) -> None:
        self.revoked.add(jti)
        self.revocations += 1


async def test_remote_revocation_shows_after_ttl() -> None:
    auth, clock = Auth(), Clock()
    check = CachedRevocationCheck(auth, ttl=1.0, clock=clock)
    assert await check("a") is False
    auth.revoked.add("a")
    clock.now += 0.5
    assert await check("a") is False  # still within the remembered second
    clock.now += 0.6
    assert await check("a") is True
    assert auth.asked == ["a", "a"]


async def test_local_revocation_shows_at_once() -> None:
    auth, clock = Auth(), Clock()
    check = CachedRevocationCheck(auth, ttl=60.0, clock=clock)
    assert await check("a") is False
    auth.revoke_here("a")
    assert await check("a") is True


async def test_memory_is_bounded() -> None:
    check = CachedRevocationCheck(Auth(), size=3, clock=Clock())
    for jti in "abcdef":
        await check(jti)
    assert len(check._seen) == 3


class SlowAuth(Auth):
    """Answers only when released, so lookups overlap."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def is_revoked(self, jti: str) -> bool:
        self.asked.append(jti)
        await self.release.wait()
        return jti in self.revoked


async def test_concurrent_misses_share_one_lookup() -> None:
    auth = SlowAuth()
    check = CachedRevocationCheck(auth, clock=Clock())
    waiting = [asyncio.ensure_future(check("a")) for _ in range(20)]
    await asyncio.sleep(0)
    auth.release.set()
    assert await asyncio.gather(*waiting) == [False] * 20
    assert auth.asked == ["a"]


async def test_a_revocation_during_a_lookup_is_not_missed() -> None:
    auth = SlowAuth()
    check = CachedRevocationCheck(auth, ttl=60.0, clock=Clock())
    first = asyncio.ensure_future(check("a"))
    await asyncio.sleep(0)
    auth.revoke_here("a")  # while the first lookup (begun before) is in flight
    second = asyncio.ensure_future(check("a"))
    await asyncio.sleep(0)
    auth.release.set()
    await first
    assert await second is True  # a fresh lookup, not the stale one
    assert await check("a") is True
