"""Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``) as a DICOMweb client peer.

``OrthancProcess`` runs Orthanc on a free loopback port with its own JSON
config and storage in a temporary folder (no authentication on its REST API,
remote access refused, no DICOM listener, ``TCP_NODELAY=1`` as in
FIELD_NOTES), and drives its REST API: ``POST /instances``, the plugin's
``/dicom-web/servers/{name}/...`` client calls and ``/jobs``. ``Relay`` sits
between Orthanc and radhub on loopback and keeps what radhub answered, so a
test can see the statuses Orthanc got (Orthanc's own reports may name another
failure).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import peer_missing
from tests.e2e.conftest import free_port

PLUGIN_GLOBS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so*",
)
FINISHED = ("Success", "Failure")


def require_orthanc() -> tuple[str, str]:
    """The Orthanc binary and its DICOMweb plugin; skip (or fail under
    ``RADHUB_REQUIRE_PEERS=1``) when either is missing."""
    binary = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/bin")
    if binary is None:
        peer_missing("Orthanc (Debian package orthanc)")
    plugins = [p for pattern in PLUGIN_GLOBS for p in sorted(glob.glob(pattern))]
    if not plugins:
        peer_missing("Orthanc's DICOMweb plugin (Debian package orthanc-dicomweb)")
    assert binary is not None
    return binary, plugins[0]


class JobFailed(AssertionError):
    """An Orthanc job ended in failure; carries the job's description."""

    def __init__(self, job: dict[str, Any]) -> None:
        super().__init__(f"Orthanc job failed: {json.dumps(job.get('Content'))}")
        self.job = job


class OrthancProcess:
    """One Orthanc on loopback; ``close`` ends it and removes its folder."""

    def __init__(self, binary: str, plugin: str) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="radhub-orthanc-"))
        self.port = free_port()
        config = {
            "Name": "radhub-peer",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "storage"),
            "HttpPort": self.port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": False,
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
            "StorageCompression": False,
            "HttpTimeout": 20,
        }
        (self.folder / "orthanc.json").write_text(json.dumps(config))
        self.log = self.folder / "orthanc.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [binary, str(self.folder / "orthanc.json")],
                stdout=log,
                stderr=log,
                env={**os.environ, "TCP_NODELAY": "1"},
            )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(httpx.TransportError):
                if self.http.get("/system").status_code == 200:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"Orthanc did not start:\n{self.log.read_text(errors='replace')}")

    def close(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)
        shutil.rmtree(self.folder, ignore_errors=True)

    def add_server(self, name: str, url: str, token: str | None, **extra: str) -> None:
        """Declare a DICOMweb server (``PUT /dicom-web/servers/{name}``)."""
        server: dict[str, Any] = {"Url": url, **extra}
        if token is not None:
            server["HttpHeaders"] = {"Authorization": f"Bearer {token}"}
        self.http.put(f"/dicom-web/servers/{name}", json=server).raise_for_status()

    def client(self, server: str, op: str, body: dict[str, Any]) -> httpx.Response:
        """``POST /dicom-web/servers/{server}/{op}`` (get, qido, delete...)."""
        return self.http.post(f"/dicom-web/servers/{server}/{op}", json=body)

    def job(self, server: str, op: str, body: dict[str, Any]) -> dict[str, Any]:
        """Run a stow/retrieve/wado client call as an asynchronous job; its final state."""
        started = self.client(server, op, {**body, "Synchronous": False})
        started.raise_for_status()
        job_id = started.json()["ID"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            job: dict[str, Any] = self.http.get(f"/jobs/{job_id}").json()
            if job["State"] in FINISHED:
                return job
            time.sleep(0.05)
        raise AssertionError(f"Orthanc job {job_id} did not finish")

    def run(self, server: str, op: str, body: dict[str, Any]) -> dict[str, Any]:
        """Like ``job``, but raises ``JobFailed`` unless the job succeeded."""
        job = self.job(server, op, body)
        if job["State"] != "Success":
            raise JobFailed(job)
        return job

    def upload(self, raw: bytes) -> dict[str, Any]:
        """Store a Part-10 file through Orthanc's own REST API; Orthanc's answer
        (``ID``, ``ParentStudy``...)."""
        answer = self.http.post("/instances", content=raw)
        answer.raise_for_status()
        stored: dict[str, Any] = answer.json()
        assert stored["Status"] == "Success", answer.text
        return stored

    def clear(self) -> None:
        for patient in self.http.get("/patients").json():
            self.http.delete(f"/patients/{patient}").raise_for_status()
        assert self.http.get("/instances").json() == []

    def stored(self) -> dict[str, str]:
        """SHA-256 of every file Orthanc holds, by SOP Instance UID."""
        out = {}
        for item in self.http.get("/instances", params={"expand": ""}).json():
            raw = self.http.get(f"/instances/{item['ID']}/file").content
            out[item["MainDicomTags"]["SOPInstanceUID"]] = hashlib.sha256(raw).hexdigest()
        return out


class Relay:
    """A loopback TCP relay to ``port`` that records what the server answers on
    each connection."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = int(self.listener.getsockname()[1])
        self.received: list[bytearray] = []
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self._sockets += [client, upstream]
            self.received.append(bytearray())
            for src, dst, buf in (
                (client, upstream, bytearray()),  # what the client sent: not kept
                (upstream, client, self.received[-1]),
            ):
                pump = threading.Thread(target=_pump, args=(src, dst, buf), daemon=True)
                self._threads.append(pump)
                pump.start()

    def close(self) -> None:
        self._stop.set()
        self._accepter.join(5)
        self.listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for pump in self._threads:
            pump.join(5)
        for sock in self._sockets:
            sock.close()

    def statuses(self) -> list[int]:
        """The status of every response radhub sent through the relay."""
        return [
            int(code)
            for data in self.received
            for code in re.findall(rb"^HTTP/1\.1 (\d{3}) ", bytes(data), re.M)
        ]


def _pump(src: socket.socket, dst: socket.socket, buf: bytearray) -> None:
    with contextlib.suppress(OSError):
        while chunk := src.recv(65536):
            buf += chunk
            dst.sendall(chunk)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)
