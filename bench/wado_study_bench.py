"""Whole-study WADO-RS retrieval, radhub against Orthanc, on a small hot archive.

``dicom_bench.py`` measures whole-study retrieval once, after a long ingest, on a
machine whose load moves under it. This script isolates it: both servers (started
as ``dicom_bench`` starts them) receive the same few 50-instance studies, then
``curl`` retrieves each whole study as stored, alternating the servers, many
times. It prints MB/s, the median time to the first byte and the median total
per server, and the ratio.

    .venv/bin/python bench/wado_study_bench.py                       # 4 studies, 12 rounds
    .venv/bin/python bench/wado_study_bench.py --radhub-root <tree>  # another source tree
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from dicom_bench import DICOM_JSON, STOW_TYPE, stow_body, study_mbps, wado_study_runs  # noqa: E402
from dicom_bench_data import all_studies, generate  # noqa: E402
from dicom_bench_servers import REPO, start_servers  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--studies", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument(
        "--data", type=Path, default=Path(tempfile.gettempdir()) / "dicombench-data"
    )
    parser.add_argument("--radhub-root", type=Path, default=REPO)
    args = parser.parse_args()
    studies = [s for s in all_studies(args.studies * 50, args.studies * 50) if s.kind == "real"]
    generate(args.data, studies)
    with tempfile.TemporaryDirectory() as tmp, start_servers(Path(tmp), args.radhub_root) as both:
        for study in studies:
            body = stow_body(study.files(args.data))
            for target in both.both:
                headers = {**target.headers, "Content-Type": STOW_TYPE, "Accept": DICOM_JSON}
                response = httpx.post(
                    f"{target.base}/studies", content=body, headers=headers, timeout=600
                )
                response.raise_for_status()
        time.sleep(5)  # let radhub's ImagingStudy sync and audit trail settle
        timings = wado_study_runs(both, studies, args.rounds)
    rate = {}
    for name, runs in timings.items():
        rate[name] = study_mbps(runs)
        first = statistics.median(f for _, f, _ in runs) * 1e3
        total = statistics.median(t for _, _, t in runs) * 1e3
        mb = runs[0][0] / 1e6
        print(
            f"{name:8s} {mb:.1f} MB per study: {rate[name]:7.1f} MB/s; first byte (median)"
            f" {first:.1f} ms; whole study (median) {total:.1f} ms"
        )
    print(f"ratio radhub/Orthanc: {rate['radhub'] / rate['Orthanc']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
