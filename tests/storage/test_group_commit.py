"""Group commit: every commit waits for an fsync that started after it; concurrent
commits share fsyncs."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from fhir_server.storage.sqlite.group_commit import GroupCommit


class Recorder(GroupCommit):
    """Counts syncs and records the highest ticket committed when each sync began."""

    def __init__(self, wal: Path) -> None:
        super().__init__(wal)
        self.began: list[int] = []
        self.lock = threading.Lock()

    def _sync(self) -> None:
        with self.lock:
            self.began.append(self._committed)
        time.sleep(0.02)  # a disk flush takes a while
        super()._sync()


async def test_each_commit_waits_for_a_sync_that_began_after_it(tmp_path: Path) -> None:
    wal = tmp_path / "db-wal"
    wal.write_bytes(b"frames")
    group = Recorder(wal)

    async def commit_and_wait(delay: float) -> int:
        await asyncio.sleep(delay)
        ticket = group.committed()
        await group.durable(ticket)
        # some sync that began after this commit has finished
        assert any(began >= ticket for began in group.began)
        return ticket

    tickets = await asyncio.gather(*(commit_and_wait(n * 0.003) for n in range(40)))
    group.close()
    assert sorted(tickets) == list(range(1, 41))
    assert len(group.began) < 20  # shared: far fewer flushes than commits


async def test_missing_wal_is_nothing_to_sync(tmp_path: Path) -> None:
    group = GroupCommit(tmp_path / "absent-wal")
    await group.durable(group.committed())
    group.close()
