"""Worker processes spoken to from the event loop itself, with no thread between.

``concurrent.futures.ProcessPoolExecutor`` hands each call through two threads
of the server's process (a feeder that pickles and writes, a manager that reads
and resolves futures) and a semaphore, each taking its turn at the interpreter
lock with the event loop; and one worker that dies (a crash in a native
decoder, the kernel's OOM killer) breaks the whole pool for good, failing
every later call until the server restarts. Here each worker is one process
holding one end of a socket pair; the loop writes a call to it and reads the
answer with its own non-blocking socket operations (``sock_sendall``,
``sock_recv``), so nothing but the loop touches a call on the server's side,
and a worker that dies fails only its own call and is replaced.

Frames are an 8-byte little-endian length and a pickle: a call is
``(fn, args)``; an answer ``(True, result)`` or ``(False, exception)``. A
worker runs one call at a time; callers wait for an idle worker. A worker that
dies fails its call with ``WorkerDied`` and is replaced.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

_HEADER = 8
_RECEIVE = 256 * 1024
_RECEIVE_MAX = 4 * 1024 * 1024
_STOP_WAIT = 10.0
_SOURCE_ROOT = str(Path(__file__).resolve().parents[2])  # the tree this server runs from


class WorkerDied(RuntimeError):
    """A worker process ended while it had a call (its answer is lost)."""


def _frame(value: Any) -> bytes:
    body = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return len(body).to_bytes(_HEADER, "little") + body


class _Worker:
    """One worker process and the server's end of its socket pair."""

    def __init__(self, initializer: Callable[..., Any], initargs: Sequence[Any]) -> None:
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_SOURCE_ROOT, env.get("PYTHONPATH")) if p)
        with theirs:
            self.process = subprocess.Popen(
                [sys.executable, "-m", __name__, str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                env=env,
            )
        ours.sendall(_frame((initializer, tuple(initargs))))  # run first, not answered
        ours.setblocking(False)
        self.socket = ours

    async def call(self, payload: bytes) -> Any:
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_sendall(self.socket, payload)
            answer = await self._answer(loop)
        except OSError as exc:
            raise self._died() from exc
        ok, value = pickle.loads(answer)
        if ok:
            return value
        raise value

    async def _answer(self, loop: asyncio.AbstractEventLoop) -> memoryview:
        buffer = bytearray()
        end = _HEADER
        while len(buffer) < end:
            # nothing follows an answer: read ahead of its header, not beyond its end
            want = _RECEIVE if end == _HEADER else min(end - len(buffer), _RECEIVE_MAX)
            chunk = await loop.sock_recv(self.socket, want)
            if not chunk:
                raise self._died()
            buffer += chunk
            if end == _HEADER and len(buffer) >= _HEADER:
                end = _HEADER + int.from_bytes(buffer[:_HEADER], "little")
        return memoryview(buffer)[_HEADER:end]

    def _died(self) -> WorkerDied:
        if self.process.poll() is None:  # its socket failed while it lives: end it
            self.process.kill()
        code = self.process.wait()
        return WorkerDied(f"worker process {self.process.pid} ended (exit status {code})")

    def stop(self) -> None:
        """Close our end: the worker sees the end of its input and exits."""
        self.socket.close()
        try:
            self.process.wait(timeout=_STOP_WAIT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class WorkerProcesses:
    """``size`` worker processes, each started with ``initializer(*initargs)``;
    ``run`` a picklable call in whichever is idle first."""

    def __init__(
        self, size: int, initializer: Callable[..., Any], initargs: Sequence[Any] = ()
    ) -> None:
        self._start = (initializer, tuple(initargs))
        self._workers = [_Worker(*self._start) for _ in range(size)]
        self._idle: deque[_Worker] = deque(self._workers)
        self._waiting: deque[asyncio.Future[_Worker]] = deque()
        self._closed = False

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids."""
        return [w.process.pid for w in self._workers]

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in a worker process; its exception is raised here."""
        payload = _frame((fn, args))
        worker = await self._acquire()
        # The exchange runs to its end even if the caller is cancelled: a half-read
        # answer would be taken for the next call's.
        exchange = asyncio.ensure_future(self._exchange(worker, payload))
        return await asyncio.shield(exchange)

    def run_on_each(self, fn: Callable[..., Any], *args: Any) -> None:
        """Start ``fn(*args)`` in every worker (warming each one up)."""
        for _ in self._workers:
            asyncio.ensure_future(self.run(fn, *args)).add_done_callback(_retrieve)

    async def _acquire(self) -> _Worker:
        if self._closed:
            raise RuntimeError("the worker processes are stopped")
        if self._idle:
            return self._idle.popleft()
        waiter: asyncio.Future[_Worker] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        return await waiter

    async def _exchange(self, worker: _Worker, payload: bytes) -> Any:
        try:
            return await worker.call(payload)
        except WorkerDied:
            worker = self._replace(worker)
            raise
        finally:
            self._release(worker)

    def _replace(self, dead: _Worker) -> _Worker:
        fresh = _Worker(*self._start)
        self._workers[self._workers.index(dead)] = fresh
        dead.socket.close()
        return fresh

    def _release(self, worker: _Worker) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():  # (a caller cancelled while it waited)
                waiter.set_result(worker)
                return
        self._idle.append(worker)

    def close(self) -> None:
        self._closed = True
        for worker in self._workers:
            worker.stop()
        for waiter in self._waiting:
            if not waiter.done():
                waiter.set_exception(RuntimeError("the worker processes are stopped"))


def _retrieve(task: asyncio.Future[Any]) -> None:
    """A warm-up call's failure shows again at the first real call: nothing to report."""
    if not task.cancelled():
        task.exception()


def _receive_exactly(sock: socket.socket, size: int) -> bytes | None:
    buffer = bytearray()
    while len(buffer) < size:
        chunk = sock.recv(min(size - len(buffer), _RECEIVE_MAX))
        if not chunk:
            return None
        buffer += chunk
    return bytes(buffer)


def _next_call(sock: socket.socket) -> Any:
    header = _receive_exactly(sock, _HEADER)
    if header is None:
        return None
    body = _receive_exactly(sock, int.from_bytes(header, "little"))
    return None if body is None else pickle.loads(body)


def _answer(fn: Callable[..., Any], args: tuple[Any, ...]) -> bytes:
    try:
        return _frame((True, fn(*args)))
    except Exception as exc:
        try:
            return _frame((False, exc))
        except Exception:  # an exception that does not pickle: its text does
            return _frame((False, RuntimeError(f"{type(exc).__name__}: {exc}")))


def serve(fd: int) -> None:
    """The worker's side: run the initializer, then answer calls until the server
    closes its end."""
    with socket.socket(fileno=fd) as sock:
        start = _next_call(sock)
        if start is None:
            return
        initializer, initargs = start
        initializer(*initargs)
        while (call := _next_call(sock)) is not None:
            fn, args = call
            sock.sendall(_answer(fn, args))


if __name__ == "__main__":
    serve(int(sys.argv[1]))
