"""The two servers of ``bench/dicom_bench.py``: Orthanc and radhub, each on loopback.

Orthanc runs from Debian's packages with its own JSON config in a temporary
folder (storage and index there, DICOMweb plugin from ``orthanc-dicomweb``,
no authentication, remote access refused, no DICOM listener) and
``TCP_NODELAY=1`` in its environment (see FIELD_NOTES). Everything else is
Orthanc's default: SQLite index, files fsynced (``SyncStorageArea``), no
compression. radhub is ``python -m fhir_server.cli serve`` on a fresh data
dir with a ``system/*.cruds`` token from ``radhub token``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import fhir_bench
from fhir_bench import free_port

DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Target:
    """A server under test: its DICOMweb base URL and request headers."""

    name: str
    base: str
    headers: dict[str, str]
    pid: int


@dataclass(frozen=True)
class Servers:
    radhub: Target
    orthanc: Target

    @property
    def both(self) -> tuple[Target, Target]:
        return (self.radhub, self.orthanc)


def wait_for(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    try:
        fhir_bench.wait_for(url, timeout)
    except RuntimeError as exc:
        raise RuntimeError(f"{url} did not come up (exit status {proc.poll()})") from exc


def orthanc_config(folder: Path, port: int) -> dict[str, object]:
    return {
        "Name": "radhub-bench",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
        "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        "StorageCompression": False,
        "KeepAlive": True,
        "TcpNoDelay": True,
    }


def start_orthanc(folder: Path) -> tuple[subprocess.Popen[bytes], Target]:
    folder.mkdir(parents=True)
    port = free_port()
    config = folder / "orthanc.json"
    config.write_text(json.dumps(orthanc_config(folder, port), indent=2))
    log = (folder / "orthanc.log").open("wb")
    env = {**os.environ, "TCP_NODELAY": "1"}
    proc = subprocess.Popen(["Orthanc", str(config)], stdout=log, stderr=log, env=env)
    wait_for(f"http://127.0.0.1:{port}/system", proc)
    return proc, Target("Orthanc", f"http://127.0.0.1:{port}/dicom-web", {}, proc.pid)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fhir_server.cli", *args]


def start_radhub(data_dir: Path, root: Path) -> tuple[subprocess.Popen[bytes], Target]:
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    serve = _cli("serve", "--data-dir", str(data_dir), "--port", str(port))
    log = (data_dir.parent / "radhub.log").open("wb")
    proc = subprocess.Popen(
        [*serve, "--dicom-port", "0", "--mllp-port", "0"], stdout=log, stderr=log, cwd=root
    )
    wait_for(f"http://127.0.0.1:{port}/healthz", proc)
    token = subprocess.run(
        _cli("token", "--data-dir", str(data_dir), "--scope", "system/*.cruds", "--ttl", "86400"),
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
    ).stdout.strip()
    headers = {"Authorization": f"Bearer {token}"}
    return proc, Target("radhub", f"http://127.0.0.1:{port}/dicomweb", headers, proc.pid)


@contextlib.contextmanager
def start_servers(work: Path, radhub_root: Path = REPO) -> Iterator[Servers]:
    """Both servers, started on fresh storage under ``work`` and stopped afterwards;
    radhub runs from the source tree ``radhub_root`` (its packages come first on the path)."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        orthanc_proc, orthanc = start_orthanc(work / "orthanc")
        procs.append(orthanc_proc)
        radhub_proc, radhub = start_radhub(work / "radhub" / "data", radhub_root)
        procs.append(radhub_proc)
        print(
            f"radhub pid {radhub.pid} at {radhub.base}; Orthanc pid {orthanc.pid} at {orthanc.base}"
        )
        yield Servers(radhub, orthanc)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)
