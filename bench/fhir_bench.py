"""FHIR core benchmark: read throughput against the framework ceiling, and write throughput.

Runs, side by side in one run (this machine is shared and noisy, so the ratios
matter more than the absolute figures):

1. the ceiling: a plain Starlette app (one uvicorn worker) returning a Patient
   held in memory;
2. radhub (one uvicorn worker, embedded store): token-checked, audited
   ``GET /fhir/Patient/{id}``;
3. the same ceiling app served with radhub's HTTP protocol (which sends a
   small response in one write where stock uvicorn makes two,
   ``fhir_server.http.coalesced_writes``): the ratio against it says what
   radhub's own work costs, with the protocol's gain taken out;

both loaded with ``wrk`` (Debian package) for the same duration and
connections, alternating rounds; then create throughput (concurrent POSTs,
resources/s) and transaction throughput (Bundles of 500 entries, resources/s).

Auditing writes each round's AuditEvents in the background, partly after the
round: radhub's read rate counts the time until it is idle again, and its CPU
per request counts that work (``/proc``: all threads of the process and of its
worker processes).

    .venv/bin/python bench/fhir_bench.py [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proc_cpu import cpu_seconds  # noqa: E402

PATIENT = {
    "resourceType": "Patient",
    "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "MRN100001"}],
    "name": [{"family": "Chalmers", "given": ["Peter", "James"]}],
    "gender": "male",
    "birthDate": "1974-12-25",
}

CEILING_APP = """
import orjson
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
BODY = orjson.dumps({patient!r})
async def read(request):
    return Response(BODY, media_type="application/fhir+json",
                    headers={{"ETag": 'W/"1"'}})
app = Starlette(routes=[Route("/fhir/Patient/{{id}}", read)])
if __name__ == "__main__":  # the ceiling with radhub's HTTP protocol
    import sys
    import uvicorn
    from fhir_server.http.coalesced_writes import CoalescingHttpToolsProtocol
    uvicorn.run(app, port=int(sys.argv[1]), http=CoalescingHttpToolsProtocol,
                log_level="warning", access_log=False)
"""
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def start_ceiling(workdir: Path, port: int, *, coalescing: bool = False) -> subprocess.Popen[bytes]:
    (workdir / "ceiling_app.py").write_text(CEILING_APP.format(patient=PATIENT))
    stock = ["-m", "uvicorn", "ceiling_app:app", "--port", str(port)]
    stock += ["--log-level", "warning", "--no-access-log"]
    proc = subprocess.Popen(
        [sys.executable, *(["ceiling_app.py", str(port)] if coalescing else stock)],
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    wait_for(f"http://127.0.0.1:{port}/fhir/Patient/x")
    return proc


def start_radhub(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fhir_server.cli",
            "serve",
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
            "--dicom-port",
            "0",
            "--mllp-port",
            "0",
        ],
        stdout=subprocess.DEVNULL,
    )
    wait_for(f"http://127.0.0.1:{port}/healthz")
    return proc


def mint(data_dir: Path) -> str:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "fhir_server.cli",
            "token",
            "--data-dir",
            str(data_dir),
            "--scope",
            "system/*.cruds",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def settle(pid: int, timeout: float = 300.0, window: float = 0.1, quiet: int = 3) -> float:
    """Wait until the process (and its children: the audit writer) is idle, its
    queued audit records written; return the seconds it was busy. Idle is
    ``quiet`` windows in a row without a clock tick of CPU: three, so the gap
    before the trail's last batch (its flush interval, 0.2 s) is not taken for
    the end. The quiet windows themselves are not counted."""
    started = time.monotonic()
    last = cpu_seconds(pid)
    idle_since: float | None = None
    streak = 0
    while time.monotonic() - started < timeout:
        at = time.monotonic()
        time.sleep(window)
        now = cpu_seconds(pid)
        if now - last < 0.005:  # no tick (10 ms) in the window
            if streak == 0:
                idle_since = at
            streak += 1
            if streak >= quiet:
                break
        else:
            streak, idle_since = 0, None
        last = now
    end = idle_since if idle_since is not None else time.monotonic()
    return end - started


def wrk(url: str, seconds: int, token: str | None, connections: int = 32) -> float:
    """Requests/s from wrk (one thread: the server under test needs the other core)."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if token:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise RuntimeError(f"{url}: {non2xx.group(1)} failed responses\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert match, out
    return float(match.group(1))


async def create_rate(base: str, token: str, count: int, concurrency: int = 16) -> float:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
        sem = asyncio.Semaphore(concurrency)

        async def one(n: int) -> None:
            async with sem:
                body = {**PATIENT, "identifier": [{"system": "urn:bench", "value": str(n)}]}
                r = await client.post("/fhir/Patient", json=body)
                assert r.status_code == 201, r.text

        started = time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(count)))
        return count / (time.perf_counter() - started)


def transaction_bundle(size: int, offset: int) -> dict[str, object]:
    entries: list[dict[str, object]] = []
    for n in range(size // 2):
        uuid = f"urn:uuid:00000000-0000-4000-8000-{offset + n:012d}"
        patient = {**PATIENT, "identifier": [{"system": "urn:tx", "value": str(offset + n)}]}
        order = {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "code": {"coding": [{"system": "http://loinc.org", "code": "24627-2"}]},
            "subject": {"reference": uuid},
        }
        entries.append(
            {"fullUrl": uuid, "resource": patient, "request": {"method": "POST", "url": "Patient"}}
        )
        entries.append({"resource": order, "request": {"method": "POST", "url": "ServiceRequest"}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


async def transaction_rate(base: str, token: str, bundles: int, size: int = 500) -> float:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    payloads = [transaction_bundle(size, i * size) for i in range(bundles)]
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=300) as client:
        started = time.perf_counter()
        for payload in payloads:
            r = await client.post("/fhir", json=payload)
            assert r.status_code == 200, r.text[:500]
        return bundles * size / (time.perf_counter() - started)


def _r(rates: list[float]) -> list[int]:
    return [round(x) for x in rates]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--creates", type=int, default=2000)
    parser.add_argument("--bundles", type=int, default=10)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cport, rport, kport = free_port(), free_port(), free_port()
        ceiling = start_ceiling(work, cport)
        like = start_ceiling(work, kport, coalescing=True)
        radhub = start_radhub(work / "data", rport)
        try:
            token = mint(work / "data")
            base = f"http://127.0.0.1:{rport}"
            created = httpx.post(
                f"{base}/fhir/Patient",
                json=PATIENT,
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/fhir+json",
                },
            )
            rid = created.json()["id"]
            ceil_rates, radhub_rates, ceil_cpu, radhub_cpu = [], [], [], []
            bursts, lags, like_rates = [], [], []
            for _ in range(args.rounds):
                like_rates.append(
                    wrk(f"http://127.0.0.1:{kport}/fhir/Patient/x", args.seconds, None)
                )
                before = cpu_seconds(ceiling.pid)
                rate = wrk(f"http://127.0.0.1:{cport}/fhir/Patient/{rid}", args.seconds, None)
                ceil_cpu.append((cpu_seconds(ceiling.pid) - before) / (rate * args.seconds))
                ceil_rates.append(rate)
                before = cpu_seconds(radhub.pid)
                rate = wrk(f"{base}/fhir/Patient/{rid}", args.seconds, token)
                # the audit records of the round are written after it: that work
                # counts, in time and CPU, against the round that caused it
                lag = settle(radhub.pid)
                bursts.append(rate)
                lags.append(lag)
                served = rate * args.seconds
                radhub_cpu.append((cpu_seconds(radhub.pid) - before) / served)
                radhub_rates.append(served / (args.seconds + lag))
            ceil, mine = max(ceil_rates), max(radhub_rates)
            print(f"read  ceiling (Starlette, memory): {ceil:9.0f} req/s  {_r(ceil_rates)}")
            print(f"read  radhub (token, audit, SQLite): {mine:7.0f} req/s  {_r(radhub_rates)}")
            print(f"read  ratio radhub/ceiling: {mine / ceil:.2f}")
            like_best = max(like_rates)
            print(
                f"read  ceiling with radhub's HTTP protocol: {like_best:.0f} req/s"
                f"  {_r(like_rates)}; ratio radhub/that ceiling: {mine / like_best:.2f}"
            )
            print(
                f"read  radhub while wrk ran: {_r(bursts)} req/s; then writing the"
                f" round's audit records: {', '.join(f'{x:.1f}' for x in lags)} s"
            )
            c, r = min(ceil_cpu) * 1e6, min(radhub_cpu) * 1e6
            print(f"read  CPU per request: ceiling {c:.0f} us, radhub {r:.0f} us ({c / r:.2f})")
            settle(radhub.pid)
            rate = asyncio.run(create_rate(base, token, args.creates))
            print(f"create  {rate:7.0f} resources/s ({args.creates} POSTs, 16 concurrent)")
            settle(radhub.pid)
            rate = asyncio.run(transaction_rate(base, token, args.bundles))
            print(f"transaction  {rate:7.0f} resources/s ({args.bundles} Bundles of 500)")
        finally:
            for proc in (ceiling, like, radhub):
                proc.terminate()
            for proc in (ceiling, like, radhub):
                proc.wait()
    print(f"cpus: {os.cpu_count()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
