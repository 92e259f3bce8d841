"""What the STOW-RS load generator of ``dicom_bench`` can send at most.

A sink that reads each request body whole and answers 200 at once (no parsing,
no storage), driven by the bench's own client code (``_stow_round``) with the
same requests as its real-size STOW phase. Whatever a server does, its STOW
rate in ``dicom_bench`` cannot exceed these figures on the same machine.
``stow_scaleout`` also runs it as a "durable sink" that stores each part as
the issue asks a server to (``keep_parts``: SHA-256, temporary file, fsync,
rename, folder fsync) and does nothing else: a floor under any conforming
server's CPU per instance.

    .venv/bin/python bench/stow_sink.py [--instances 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import mmap
import os
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dicom_bench import Ingest, _stow_round, requests_of, stow_requests  # noqa: E402
from dicom_bench_data import all_studies, generate  # noqa: E402
from dicom_bench_servers import Target, free_port, wait_for  # noqa: E402

RESPONSE = b'{"00081199": {"vr": "SQ", "Value": []}}'


def keep_parts(body: bytes, folder: Path, direct: bool = False) -> None:
    """The storage a conforming server does for a STOW body, and nothing more: each
    part hashed (SHA-256) into a temporary file of its own, fsynced, renamed to its
    name, and the folder fsynced once (no DICOM parsing, no index). ``direct``
    writes each file with O_DIRECT, past the page cache."""
    delimiter = body[: body.index(b"\r\n")]
    for part in body.split(delimiter)[1:-1]:
        content = memoryview(part)[part.index(b"\r\n\r\n") + 4 : -2]
        digest = hashlib.sha256(content).hexdigest()
        fd, temporary = tempfile.mkstemp(dir=folder)
        try:
            if direct:
                _write_direct(temporary, content)
            else:
                os.write(fd, content)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, folder / digest)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_direct(path: str, content: memoryview) -> None:
    """Write ``content`` to ``path`` with O_DIRECT: from a page-aligned copy, padded
    to whole blocks, then cut to its size."""
    direct = os.open(path, os.O_WRONLY | os.O_DIRECT)
    try:
        padded = -(-len(content) // 4096) * 4096
        with mmap.mmap(-1, padded) as aligned:
            aligned[: len(content)] = content
            os.write(direct, memoryview(aligned))
        os.ftruncate(direct, len(content))
    finally:
        os.close(direct)


async def _answer(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    store: Path | None,
    direct: bool,
) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            body = await reader.readexactly(length)
            if store is not None and body:  # (wait_for's GET has none)
                await asyncio.to_thread(keep_parts, body, store, direct)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/dicom+json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(RESPONSE) + RESPONSE
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def _serve(port: int, store: Path | None, direct: bool) -> None:
    server = await asyncio.start_server(
        partial(_answer, store=store, direct=direct), "127.0.0.1", port, limit=1 << 20
    )
    async with server:
        await server.serve_forever()


async def _measure(data: Path, instances: int, target: Target) -> None:
    studies = list(all_studies(instances, instances))
    batches = requests_of(data, studies, 10)
    requests = stow_requests(batches)
    for clients in (1, 4):
        seconds = await _stow_round(target, requests, clients, Ingest())
        n = sum(len(b) for b in batches)
        print(f"sink, {clients} client(s): {n / seconds:.1f} inst/s ({n} instances)")


def start_sink(
    store: Path | None = None, *, direct: bool = False
) -> tuple[subprocess.Popen[bytes], Target]:
    """The sink in its own process, as a server under test would be; with ``store``,
    it keeps each part there (``keep_parts``), with O_DIRECT if ``direct``."""
    port = free_port()
    keep = ["--store", str(store)] if store is not None else []
    keep += ["--direct"] if direct else []
    sink = subprocess.Popen([sys.executable, __file__, "--serve", str(port), *keep])
    try:
        wait_for(f"http://127.0.0.1:{port}/", sink)
    except BaseException:
        sink.kill()
        sink.wait()
        raise
    name = "sink" if store is None else "direct sink" if direct else "durable sink"
    return sink, Target(name, f"http://127.0.0.1:{port}/dicomweb", {}, sink.pid)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=3000)
    parser.add_argument("--data", type=Path, default=Path("/tmp/dicombench/data"))
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the sink process
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--direct", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve, args.store, args.direct))
        return 0
    generate(args.data, list(all_studies(args.instances, args.instances)))
    sink, target = start_sink()
    try:
        asyncio.run(_measure(args.data, args.instances, target))
    finally:
        sink.terminate()
        sink.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
