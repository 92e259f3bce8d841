"""DICOMweb benchmark: radhub against Orthanc, side by side in one run.

Starts Orthanc (Debian's ``orthanc`` and ``orthanc-dicomweb``, own temporary
config and storage, loopback, no authentication, ``TCP_NODELAY=1``) and
``radhub serve`` on a fresh data dir, then for each size in ``--instances``
(ascending; each size adds instances to the same two servers):

* STOW-RS ingest, instances/s and MB/s, with 1 and 4 concurrent clients
  (``--per-request`` instances per request, all of one series, as modality
  gateways send them); rounds alternate between the servers;
* a count through QIDO-RS of what each server holds against what it
  acknowledged (Orthanc has answered 200 for instances it did not store);
* QIDO-RS study search p50/p95 for a mix of queries with fresh arguments each
  run (every value sent literally: Orthanc does not percent-decode ``*``);
* WADO-RS whole-study retrieval MB/s (curl, as stored), single-instance
  retrieval p50 and series metadata p50.

Throughput ratios are radhub/Orthanc; latency ratios are Orthanc/radhub. In
both, above 1 means radhub is better.

    .venv/bin/python bench/dicom_bench.py                       # 2,000 instances, quick
    .venv/bin/python bench/dicom_bench.py --instances 10000 100000 --data /tmp/dicombench/data

Instances beyond ``--real-max`` (10,000) are small 64x64 images (see
``dicom_bench_data``); STOW and WADO throughput are measured on real-size ones.
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dicom_bench_data import Study, all_studies, generate  # noqa: E402
from dicom_bench_servers import REPO, Servers, Target, start_servers  # noqa: E402
from proc_cpu import cpu_seconds  # noqa: E402

BOUNDARY = "radhub-bench-boundary"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
DICOM_JSON = "application/dicom+json"
REFERENCED_SOP_SEQUENCE, FAILED_SOP_SEQUENCE = "00081199", "00081198"
REFERENCED_SOP_INSTANCE = "00081155"
STUDY_UID, N_INSTANCES = "0020000D", "00201208"
ROUNDS = 10
PAGE = 100


@dataclass
class Ingest:
    """One server's acknowledged instances and time spent per concurrency."""

    acked: dict[str, set[str]] = field(default_factory=dict)
    failed: int = 0
    seconds: dict[int, float] = field(default_factory=dict)
    cpu: dict[int, float] = field(default_factory=dict)
    count: dict[int, int] = field(default_factory=dict)
    nbytes: dict[int, int] = field(default_factory=dict)


def requests_of(data: Path, studies: Sequence[Study], per_request: int) -> list[list[Path]]:
    """Instance files grouped into STOW requests, each within one series."""
    out: list[list[Path]] = []
    for study in studies:
        files = study.files(data)
        offset = 0
        for series in study.series:
            n = len(series.instance_uids)
            mine = files[offset : offset + n]
            offset += n
            out.extend(mine[i : i + per_request] for i in range(0, n, per_request))
    return out


def stow_body(files: Sequence[Path]) -> bytes:
    head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    parts = [head + f.read_bytes() + b"\r\n" for f in files]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def _acknowledged(body: dict[str, Any]) -> tuple[list[str], int]:
    """SOP Instance UIDs a Store Instances Response names as stored; how many failed."""

    def items(tag: str) -> list[dict[str, Any]]:
        element = body.get(tag)
        return list(element.get("Value") or []) if isinstance(element, dict) else []

    stored = items(REFERENCED_SOP_SEQUENCE)
    return [str(i[REFERENCED_SOP_INSTANCE]["Value"][0]) for i in stored], len(
        items(FAILED_SOP_SEQUENCE)
    )


@dataclass(frozen=True)
class StowRequest:
    """One STOW-RS request: its instance files and the body built from them."""

    files: list[Path]
    body: bytes


def stow_requests(batches: Sequence[list[Path]]) -> list[StowRequest]:
    """Bodies built before any clock starts: the load generator reads no disk while timed."""
    return [StowRequest(files, stow_body(files)) for files in batches]


async def _stow_round(
    target: Target, requests: Sequence[StowRequest], clients: int, ingest: Ingest
) -> float:
    """Send ``requests`` with ``clients`` concurrent connections; seconds taken."""
    queue: asyncio.Queue[StowRequest] = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)
    headers = {**target.headers, "Content-Type": STOW_TYPE, "Accept": DICOM_JSON}

    async def client() -> None:
        async with httpx.AsyncClient(headers=headers, timeout=600) as http:
            while not queue.empty():
                request = queue.get_nowait()
                files = request.files
                response = await http.post(f"{target.base}/studies", content=request.body)
                sops, failed = (
                    _acknowledged(response.json()) if response.content else ([], len(files))
                )
                if response.status_code not in (200, 202):
                    failed = len(files)
                    sops = []
                study = str(files[0].parent)
                ingest.acked.setdefault(study, set()).update(sops)
                ingest.failed += failed

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - started


def stow_phase(
    servers: Servers, batches: list[list[Path]], clients: int, ingests: dict[str, Ingest]
) -> None:
    """Ingest ``batches`` into both servers in alternating rounds."""
    size = max(1, -(-len(batches) // ROUNDS))
    for r, start in enumerate(range(0, len(batches), size)):
        chunk = batches[start : start + size]
        nbytes = sum(f.stat().st_size for b in chunk for f in b)
        requests = stow_requests(chunk)  # one round's bodies in memory, ~0.4 GB at most
        order = servers.both if r % 2 == 0 else servers.both[::-1]
        for target in order:
            ing = ingests[target.name]
            cpu = cpu_seconds(target.pid)
            seconds = asyncio.run(_stow_round(target, requests, clients, ing))
            ing.cpu[clients] = ing.cpu.get(clients, 0.0) + cpu_seconds(target.pid) - cpu
            ing.seconds[clients] = ing.seconds.get(clients, 0.0) + seconds
            ing.count[clients] = ing.count.get(clients, 0) + sum(len(b) for b in chunk)
            ing.nbytes[clients] = ing.nbytes.get(clients, 0) + nbytes


def held(target: Target) -> dict[str, int]:
    """Instances per study as the server reports them through QIDO-RS."""
    out: dict[str, int] = {}
    with httpx.Client(headers={**target.headers, "Accept": DICOM_JSON}, timeout=120) as http:
        offset = 0
        while True:
            url = f"{target.base}/studies?includefield={N_INSTANCES}&limit={PAGE}&offset={offset}"
            page = http.get(url).json()
            for study in page:
                out[study[STUDY_UID]["Value"][0]] = int(study[N_INSTANCES]["Value"][0])
            if len(page) < PAGE:
                return out
            offset += PAGE


def verify(target: Target, ingest: Ingest, studies: Sequence[Study], data: Path) -> list[str]:
    """Discrepancies between what the server acknowledged and what it holds."""
    counts = held(target)
    by_folder = {str(data / s.folder): s.uid for s in studies}
    problems = []
    acked_total = 0
    for folder, sops in ingest.acked.items():
        uid = by_folder[folder]
        acked_total += len(sops)
        if counts.get(uid, 0) != len(sops):
            problems.append(f"study {uid}: acknowledged {len(sops)}, holds {counts.get(uid, 0)}")
    total = sum(counts.values())
    print(f"  {target.name}: acknowledged {acked_total}, failed {ingest.failed}, holds {total}")
    return problems


def _qido_mix(studies: Sequence[Study]) -> dict[str, Callable[[random.Random], str]]:
    def pick(rng: random.Random) -> Study:
        return rng.choice(studies)

    def month(rng: random.Random) -> str:
        d = pick(rng).study_date
        last = calendar.monthrange(int(d[:4]), int(d[4:6]))[1]  # a day the month has
        return f"StudyDate={d[:6]}01-{d[:6]}{last:02d}&limit={PAGE}"

    return {
        "PatientID exact": lambda rng: f"PatientID={pick(rng).patient_id}",
        "PatientName=SMI*": lambda rng: f"PatientName=SMI*&limit={PAGE}",
        "StudyDate range (a month)": month,
        "ModalitiesInStudy": lambda rng: (
            f"ModalitiesInStudy={rng.choice('CM')}{rng.choice('TR')}&limit={PAGE}"
        ),
        "AccessionNumber": lambda rng: f"AccessionNumber={pick(rng).accession}",
        f"page (limit {PAGE // 4}, offset)": lambda rng: (
            f"limit={PAGE // 4}&offset={rng.randrange(max(1, len(studies) - PAGE))}"
        ),
    }


def _studies_query(make: Callable[[random.Random], str]) -> Callable[[random.Random], str]:
    return lambda rng: f"/studies?{make(rng)}"


def _timed_get(http: httpx.Client, url: str, accept: str) -> tuple[float, int]:
    started = time.perf_counter()
    response = http.get(url, headers={"Accept": accept})  # the body is read in full
    return (time.perf_counter() - started) * 1000, response.status_code


def latency(
    servers: Servers, runs: int, urls: Callable[[random.Random], str], accept: str
) -> dict[str, list[float]]:
    """Milliseconds per request on each server, alternating, same path each pair."""
    out: dict[str, list[float]] = {t.name: [] for t in servers.both}
    clients = {t.name: httpx.Client(headers=t.headers, timeout=60) for t in servers.both}
    rng = random.Random(7)
    try:
        for n in range(runs + 3):
            path = urls(rng)
            order = servers.both if n % 2 == 0 else servers.both[::-1]
            for target in order:
                ms, status = _timed_get(clients[target.name], target.base + path, accept)
                if status != 200:
                    raise RuntimeError(f"{target.name} {path}: HTTP {status}")
                if n >= 3:  # warm-up runs are dropped
                    out[target.name].append(ms)
    finally:
        for c in clients.values():
            c.close()
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def wado_study(servers: Servers, studies: Sequence[Study], rounds: int = 2) -> dict[str, float]:
    """MB/s retrieving whole studies with curl (as stored), alternating servers."""
    return {
        name: study_mbps(runs) for name, runs in wado_study_runs(servers, studies, rounds).items()
    }


def wado_study_runs(
    servers: Servers, studies: Sequence[Study], rounds: int
) -> dict[str, list[tuple[int, float, float]]]:
    """Each server's ``curl_timed`` of every whole-study retrieval, servers alternating."""
    runs: dict[str, list[tuple[int, float, float]]] = {t.name: [] for t in servers.both}
    for r in range(rounds):
        for k, study in enumerate(studies):
            order = servers.both if (r + k) % 2 == 0 else servers.both[::-1]
            for target in order:
                runs[target.name].append(curl_timed(target, f"/studies/{study.uid}", AS_STORED))
    return runs


def study_mbps(runs: Sequence[tuple[int, float, float]]) -> float:
    return sum(n for n, _, _ in runs) / sum(t for _, _, t in runs) / 1e6


def curl_timed(target: Target, path: str, accept: str) -> tuple[int, float, float]:
    """GET with curl: bytes received, seconds to the first byte, seconds in all."""
    timing = "%{http_code} %{size_download} %{time_starttransfer} %{time_total}"
    cmd = ["curl", "-s", "-o", "/dev/null", "-w", timing]
    for name, value in {**target.headers, "Accept": accept}.items():
        cmd += ["-H", f"{name}: {value}"]
    out = subprocess.run([*cmd, target.base + path], capture_output=True, text=True, check=True)
    status, size, first, seconds = out.stdout.split()
    if status != "200":
        raise RuntimeError(f"{target.name} {path}: HTTP {status}")
    return int(size), float(first), float(seconds)


class Table:
    """Rows of radhub, Orthanc and the ratio, printed at the end."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []

    def throughput(self, label: str, mine: float, theirs: float, unit: str) -> None:
        self.rows.append((label, f"{mine:,.1f} {unit}", f"{theirs:,.1f} {unit}", _r(mine, theirs)))

    def cost(self, label: str, mine: float, theirs: float, unit: str) -> None:
        self.rows.append((label, f"{mine:,.2f} {unit}", f"{theirs:,.2f} {unit}", _r(theirs, mine)))

    def latency(self, label: str, mine: list[float], theirs: list[float]) -> None:
        a50, a95, b50, b95 = (pct(mine, 0.5), pct(mine, 0.95), pct(theirs, 0.5), pct(theirs, 0.95))
        ratio = f"{_r(b50, a50)} / {_r(b95, a95)}"
        self.rows.append((label, f"{a50:.1f} / {a95:.1f} ms", f"{b50:.1f} / {b95:.1f} ms", ratio))

    def show(self) -> None:
        widths = [max(len(r[i]) for r in [*self.rows, _HEAD]) for i in range(4)]
        for row in [_HEAD, *self.rows]:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))


_HEAD = ("measure", "radhub", "Orthanc", "ratio (>1: radhub better)")


def _r(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def _totals(ing: Ingest, clients: int) -> tuple[float, int, int, float]:
    c = clients
    return ing.seconds.get(c, 0.0), ing.count.get(c, 0), ing.nbytes.get(c, 0), ing.cpu.get(c, 0.0)


def _rates(
    before: tuple[float, int, int, float], after: tuple[float, int, int, float]
) -> tuple[float, float, float]:
    """Instances/s, MB/s and server CPU ms per instance between two totals."""
    seconds, count = after[0] - before[0], after[1] - before[1]
    nbytes, cpu = after[2] - before[2], after[3] - before[3]
    return count / seconds, nbytes / seconds / 1e6, cpu * 1000 / count


def run_size(
    servers: Servers,
    args: argparse.Namespace,
    size: int,
    new: list[Study],
    everything: list[Study],
    ingests: dict[str, Ingest],
    table: Table,
) -> None:
    data: Path = args.data
    batches = requests_of(data, new, args.per_request)
    real = [b for b in batches if "/real/" in str(b[0])]
    small = [b for b in batches if "/real/" not in str(b[0])]
    split = int(len(real) * args.single_share) if min(args.clients) == 1 else 0
    phases = [(min(args.clients), real[:split]), (max(args.clients), real[split:])]
    phases.append((max(args.clients), small))
    for clients, chunk in phases:
        if chunk:
            print(f"  STOW {sum(len(b) for b in chunk)} instances, {clients} client(s)")
            kind = "small" if chunk is small else "real"
            before = {n: _totals(i, clients) for n, i in ingests.items()}
            stow_phase(servers, chunk, clients, ingests)
            after = {n: _totals(i, clients) for n, i in ingests.items()}
            rates = {n: _rates(before[n], after[n]) for n in ingests}
            mine, theirs = rates["radhub"], rates["Orthanc"]
            label = f"STOW {kind}, {clients} client(s), {args.per_request}/request @{size}"
            table.throughput(label, mine[0], theirs[0], "inst/s")
            table.throughput(label, mine[1], theirs[1], "MB/s")
            table.cost(f"{label}, server CPU", mine[2], theirs[2], "ms/inst")
    print(f"  verifying stored counts at {size}")
    for target in servers.both:
        problems = verify(target, ingests[target.name], everything, data)
        for p in problems[:10]:
            print(f"    DISCREPANCY {target.name}: {p}")
        if problems:
            table.rows.append((f"{target.name} discrepancies @{size}", str(len(problems)), "", ""))
    for label, make in _qido_mix(everything).items():
        res = latency(servers, args.runs, _studies_query(make), DICOM_JSON)
        table.latency(f"QIDO {label} @{size}", res["radhub"], res["Orthanc"])
    reals = [s for s in everything if s.kind == "real"]
    rng = random.Random(size)
    mbps = wado_study(servers, rng.sample(reals, min(args.wado_studies, len(reals))))
    table.throughput(f"WADO-RS study retrieval @{size}", mbps["radhub"], mbps["Orthanc"], "MB/s")

    def instance(r: random.Random) -> str:
        s = r.choice(reals)
        se = r.choice(s.series)
        return f"/studies/{s.uid}/series/{se.uid}/instances/{r.choice(se.instance_uids)}"

    def metadata(r: random.Random) -> str:
        s = r.choice(everything)
        return f"/studies/{s.uid}/series/{r.choice(s.series).uid}/metadata"

    res = latency(servers, args.runs, instance, AS_STORED)
    table.latency(f"WADO-RS single instance @{size}", res["radhub"], res["Orthanc"])
    res = latency(servers, args.runs, metadata, DICOM_JSON)
    table.latency(f"WADO-RS series metadata @{size}", res["radhub"], res["Orthanc"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, nargs="+", default=[2000])
    parser.add_argument("--real-max", type=int, default=10000)
    parser.add_argument("--per-request", type=int, default=10)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--single-share", type=float, default=0.3,
                        help="share of the real instances sent with one client")  # fmt: skip
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--wado-studies", type=int, default=6)
    parser.add_argument(
        "--data", type=Path, default=Path(tempfile.gettempdir()) / "dicombench-data"
    )
    parser.add_argument("--work", type=Path, default=None, help="server storage (default: temp)")
    parser.add_argument("--radhub-root", type=Path, default=REPO,
                        help="source tree radhub runs from (e.g. a snapshot)")  # fmt: skip
    args = parser.parse_args()
    for tool in ("Orthanc", "curl"):
        if shutil.which(tool) is None:
            print(f"bench needs {tool} (apt-get install orthanc orthanc-dicomweb curl)")
            return 2
    sizes = sorted(args.instances)
    everything = list(all_studies(sizes[-1], args.real_max))
    print(f"generating data into {args.data} (reused when present)")
    generate(args.data, everything)
    work = Path(tempfile.mkdtemp(prefix="dicombench-", dir=args.work))
    table = Table()
    try:
        with start_servers(work, args.radhub_root) as servers:
            ingests = {t.name: Ingest() for t in servers.both}
            done = 0
            for size in sizes:
                have = list(all_studies(size, args.real_max))
                print(f"size {size}: {sum(s.n_instances for s in have)} instances")
                run_size(servers, args, size, have[done:], have, ingests, table)
                done = len(have)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print()
    table.show()
    load = os.getloadavg()
    print(f"\ncpus {os.cpu_count()}, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
