from __future__ import annotations

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
