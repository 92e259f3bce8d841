"""What the STOW-RS load generator of ``dicom_bench`` can send at most.

A sink that reads each request body whole and answers 200 at once (no parsing,
no storage), driven by the bench's own client code (``_stow_round``) with the
same requests as its real-size STOW phase. Whatever a server does, its STOW
rate in ``dicom_bench`` cannot exceed these figures on the same machine.

    .venv/bin/python bench/stow_sink.py [--instances 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dicom_bench import Ingest, _stow_round, requests_of, stow_requests  # noqa: E402
from dicom_bench_data import all_studies, generate  # noqa: E402
from dicom_bench_servers import Target, free_port, wait_for  # noqa: E402

RESPONSE = b'{"00081199": {"vr": "SQ", "Value": []}}'


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/dicom+json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(RESPONSE) + RESPONSE
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


async def _serve(port: int) -> None:
    server = await asyncio.start_server(_answer, "127.0.0.1", port, limit=1 << 20)
    async with server:
        await server.serve_forever()


async def _measure(data: Path, instances: int, port: int, pid: int) -> None:
    studies = list(all_studies(instances, instances))
    batches = requests_of(data, studies, 10)
    requests = stow_requests(batches)
    target = Target("sink", f"http://127.0.0.1:{port}/dicomweb", {}, pid)
    for clients in (1, 4):
        seconds = await _stow_round(target, requests, clients, Ingest())
        n = sum(len(b) for b in batches)
        print(f"sink, {clients} client(s): {n / seconds:.1f} inst/s ({n} instances)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=3000)
    parser.add_argument("--data", type=Path, default=Path("/tmp/dicombench/data"))
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # the sink process
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve))
        return 0
    generate(args.data, list(all_studies(args.instances, args.instances)))
    port = free_port()
    # its own process, as a server under test would be
    sink = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    try:
        wait_for(f"http://127.0.0.1:{port}/", sink)
        asyncio.run(_measure(args.data, args.instances, port, sink.pid))
    finally:
        sink.terminate()
        sink.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
