"""The server process settles its heap once started (fhir_server.heap)."""

from __future__ import annotations

import subprocess
import sys

from fhir_server import heap


def test_settle_freezes_the_start_up_heap_and_raises_the_young_threshold() -> None:
    # in a fresh interpreter: freezing this test process's heap would outlive the test
    probe = (
        "import gc; from fhir_server import heap, app; heap.settle(); "
        "print(gc.get_freeze_count(), *gc.get_threshold())"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    frozen, *threshold = (int(x) for x in out.stdout.split())
    assert frozen > 10_000  # the imported app's objects are no longer walked
    assert tuple(threshold) == (heap.GEN0, heap.GEN1, heap.GEN2) != (700, 10, 10)
