"""Running ``radhub serve`` as a real process for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import require_peer

if TYPE_CHECKING:
    from playwright.sync_api import Browser

RADHUB = [sys.executable, "-m", "fhir_server.cli"]
CHROMIUM_ARGS = [
    "--disable-gpu",
    "--disable-background-networking",
    "--no-first-run",
    # the tests' servers are on loopback addresses; any other host fails at once
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``radhub serve`` on a free loopback port, with its own data dir."""

    def __init__(self, data_dir: Path, port: int | None = None, *extra: str) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.extra = extra
        self.proc: subprocess.Popen[str] | None = None
        self.output: list[str] = []
        self._drainer: threading.Thread | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [
                *RADHUB,
                "serve",
                "--data-dir",
                str(self.data_dir),
                "--port",
                str(self.port),
                "--dicom-port",
                "0",
                "--mllp-port",
                "0",
                *self.extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,  # its own process group: killed whole, like a crash
        )
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.output.append(line)
            if "FHIR/HTTP listening" in line:
                # keep draining, or a full pipe would block the server's logging
                self._drainer = threading.Thread(target=self._drain, daemon=True)
                self._drainer.start()
                return
        self.kill()
        raise RuntimeError("radhub serve did not start:\n" + "".join(self.output))

    def _drain(self) -> None:
        proc = self.proc
        if proc is None or proc.stdout is None:
            return
        try:
            for line in proc.stdout:
                self.output.append(line)
        except (ValueError, OSError):
            pass  # closed by kill()

    def kill(self) -> None:
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def _end(self, sig: int) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            self.proc.wait(20)
        # the drainer ends at EOF once the process is gone; closing the pipe under a
        # reading thread would block
        if self._drainer is not None:
            self._drainer.join(10)
            if self._drainer.is_alive():
                return  # something still holds the pipe: leave it to the daemon thread
            self._drainer = None
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def cli(*args: str) -> str:
    """Run a ``radhub`` sub-command; its stdout, stripped."""
    done = subprocess.run([*RADHUB, *args], capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


@pytest.fixture
def radhub_server() -> Iterator[Callable[..., ServerProcess]]:
    """Start ``radhub serve`` processes; all are killed at the end of the test."""
    started: list[ServerProcess] = []

    def start(data_dir: Path, port: int | None = None, *extra: str) -> ServerProcess:
        server = ServerProcess(data_dir, port, *extra)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.kill()


@pytest.fixture
def radhub_cli() -> Callable[..., str]:
    return cli


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, closed whatever the tests did (Playwright's own
    browser builds cannot be downloaded here, so the system one is launched by path)."""
    require_peer("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=shutil.which("chromium"),
            headless=True,
            chromium_sandbox=False,  # --no-sandbox: tests run as root in containers
            args=CHROMIUM_ARGS,
        )
        try:
            yield chromium
        finally:
            chromium.close()
