"""Would more server processes take STOW-RS faster? An upper bound, measured.

radhub takes a STOW-RS request in one process: its event loop receives the
body, splits the parts and stages the files; worker processes describe them.
A design with several receiving processes would also have to share one index.
This measures what such a design could reach at best: ``--servers`` counts of
fully independent radhub servers (each its own data directory, so nothing is
shared and nothing waits for another), with ``--clients`` concurrent clients in
all split evenly among them, against Orthanc with the same clients, on the
same requests, in alternating rounds. Two sinks run beside them (see
``stow_sink``): one that only reads each body, and one that also stores each
part as a conforming server must (SHA-256, temporary file, fsync, rename) and
does nothing else; their CPU per instance is a floor under any server's here.

For each it prints instances/s, the machine's busy cores over the timed part
(``/proc/stat``: every process, the load generator's and the kernel's
write-back threads included) and that machine CPU per instance, with
radhub/Orthanc ratios. Where radhub's servers keep the machine busy and still
fall short, the limit is CPU per instance, which more processes do not lower.

    .venv/bin/python bench/stow_scaleout.py [--instances 3000] [--servers 1 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dicom_bench import Ingest, StowRequest, _stow_round, requests_of, stow_requests  # noqa: E402
from dicom_bench_data import all_studies, generate  # noqa: E402
from dicom_bench_servers import REPO, Target, start_orthanc, start_radhub  # noqa: E402
from stow_sink import start_sink  # noqa: E402

PER_REQUEST = 10


@dataclass
class Setup:
    """One way of serving: its servers, and what it has done so far."""

    name: str
    targets: list[Target]
    seconds: float = 0.0
    busy: float = 0.0  # machine CPU seconds while it was timed
    count: int = 0
    failed: int = 0
    acknowledges: bool = True  # a sink names no instance in its answers: count those sent

    def rate(self) -> float:
        return self.count / self.seconds

    def cores(self) -> float:
        return self.busy / self.seconds

    def ms_per_instance(self) -> float:
        return self.busy / self.count * 1e3


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (not idle, not iowait)."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    idle, iowait = fields[3], fields[4]
    return (sum(fields) - idle - iowait) / os.sysconf("SC_CLK_TCK")


def clients_for(servers: int, clients: int) -> list[int]:
    """``clients`` spread over ``servers`` as evenly as they go."""
    return [clients // servers + (1 if i < clients % servers else 0) for i in range(servers)]


async def _send(setup: Setup, requests: Sequence[StowRequest], clients: int) -> Ingest:
    """``requests`` dealt round-robin to ``setup``'s servers, each with its share
    of the clients, all at once; the one Ingest that counts what was acknowledged."""
    ingest = Ingest()
    targets = setup.targets
    shares = clients_for(len(targets), clients)
    await asyncio.gather(
        *(
            _stow_round(target, requests[i :: len(targets)], share, ingest)
            for i, (target, share) in enumerate(zip(targets, shares, strict=True))
        )
    )
    return ingest


def timed_round(setup: Setup, requests: Sequence[StowRequest], clients: int) -> None:
    busy = machine_busy_seconds()
    started = time.perf_counter()
    ingest = asyncio.run(_send(setup, requests, clients))
    setup.seconds += time.perf_counter() - started
    setup.busy += machine_busy_seconds() - busy
    if setup.acknowledges:
        setup.count += sum(len(sops) for sops in ingest.acked.values())
    else:
        setup.count += sum(len(r.files) for r in requests) - ingest.failed
    setup.failed += ingest.failed


@contextlib.contextmanager
def started(work: Path, radhub_counts: Sequence[int]) -> Iterator[list[Setup]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        proc, orthanc = start_orthanc(work / "orthanc")
        procs.append(proc)
        setups = [Setup("Orthanc", [orthanc])]
        for store, direct in ((None, False), (work / "sink", False), (work / "dsink", True)):
            if store is not None:
                store.mkdir()
            proc, sink = start_sink(store, direct=direct)
            procs.append(proc)
            setups.append(Setup(sink.name, [sink], acknowledges=False))
        for count in radhub_counts:
            targets = []
            for i in range(count):
                proc, target = start_radhub(work / f"radhub{count}-{i}" / "data", REPO)
                procs.append(proc)
                targets.append(target)
            setups.append(Setup(f"radhub x{count}", targets))
        yield setups
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)


def report(setups: Sequence[Setup], clients: int) -> None:
    orthanc = setups[0]
    print(f"\nSTOW-RS, {clients} clients in all, {PER_REQUEST} instances per request")
    print(f"{'':<13} {'inst/s':>8} {'ratio':>6} {'busy cores':>11} {'machine ms/inst':>16}")
    for setup in setups:
        ratio = setup.rate() / orthanc.rate()
        print(
            f"{setup.name:<13} {setup.rate():8.1f} {ratio:6.2f} {setup.cores():11.2f}"
            f" {setup.ms_per_instance():16.2f}"
            + (f"  ({setup.failed} failed)" if setup.failed else "")
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=3000)
    parser.add_argument("--servers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--data", type=Path, default=Path("/tmp/dicombench/data"))
    args = parser.parse_args()
    studies = list(all_studies(args.instances, args.instances))
    generate(args.data, studies)
    batches = requests_of(args.data, studies, PER_REQUEST)
    warm, batches = batches[:1], batches[1:]
    size = -(-len(batches) // args.rounds)
    work = Path(tempfile.mkdtemp(prefix="radhub-scaleout-"))
    try:
        with started(work, args.servers) as setups:
            for setup in setups:  # first connections, caches and workers: not timed
                for target in setup.targets:
                    asyncio.run(_stow_round(target, stow_requests(warm), 1, Ingest()))
            for r, start in enumerate(range(0, len(batches), size)):
                requests = stow_requests(batches[start : start + size])
                for setup in setups if r % 2 == 0 else setups[::-1]:
                    timed_round(setup, requests, args.clients)
            report(setups, args.clients)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
