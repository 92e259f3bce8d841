"""Did a change move STOW-RS? Two (or more) radhub source trees, alternating.

Each run starts ``radhub serve`` from one tree on a fresh data directory, sends
the bench's real-size instances (``dicom_bench_data``, 10 per request) with
``--clients`` concurrent clients, and stops it; the trees take turns, ``--rounds``
times, so a machine that gets busier or quieter weighs on each alike. Printed per
run: instances/s, the machine's CPU per instance and busy cores (``/proc/stat``:
every process, the load generator's too); then each tree's mean and its ratio to
the first tree's. Make a tree of a commit with ``git archive <rev> | tar -x -C DIR``
(and a link to the virtualenv as DIR/.venv).

    .venv/bin/python bench/stow_ab.py --roots /tmp/old /tmp/new [--instances 3000]
        [--clients 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dicom_bench import Ingest, _stow_round, requests_of, stow_requests  # noqa: E402
from dicom_bench_data import all_studies, generate  # noqa: E402
from dicom_bench_servers import start_radhub  # noqa: E402
from stow_scaleout import Setup, timed_round  # noqa: E402

PER_REQUEST = 10


def one_run(root: Path, work: Path, batches: list[list[Path]], clients: int) -> float:
    """Instances/s of one fresh server from ``root``; prints the run's figures."""
    shutil.rmtree(work, ignore_errors=True)
    proc, target = start_radhub(work / "data", root)
    setup = Setup(str(root), [target])
    try:
        warm, timed = stow_requests(batches[:1]), stow_requests(batches[1:])
        asyncio.run(_stow_round(target, warm, 1, Ingest()))  # connections, workers: not timed
        timed_round(setup, timed, clients)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    print(
        f"{root}: {setup.count} instances, {setup.rate():.1f} inst/s, "
        f"{setup.ms_per_instance():.2f} ms machine CPU each, {setup.cores():.2f} busy cores"
        + (f", {setup.failed} failed" if setup.failed else ""),
        flush=True,
    )
    return setup.rate()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--roots", type=Path, nargs="+", required=True)
    parser.add_argument("--instances", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path("/tmp/dicombench/data"))
    args = parser.parse_args()
    studies = list(all_studies(args.instances, args.instances))
    generate(args.data, studies)
    batches = requests_of(args.data, studies, PER_REQUEST)
    rates: dict[Path, list[float]] = {root: [] for root in args.roots}
    work = Path(tempfile.mkdtemp(prefix="radhub-stow-ab-"))
    try:
        for r in range(args.rounds):
            order = args.roots if r % 2 == 0 else args.roots[::-1]
            for root in order:
                rates[root].append(one_run(root, work / "run", batches, args.clients))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    first = sum(rates[args.roots[0]]) / args.rounds
    print(f"\n{args.clients} clients, {args.rounds} rounds; mean inst/s and ratio to the first")
    for root, runs in rates.items():
        mean = sum(runs) / len(runs)
        print(f"{mean:8.1f}  {mean / first:5.2f}  {root}  ({', '.join(f'{x:.0f}' for x in runs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
