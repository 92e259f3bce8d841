"""The cyclic garbage collector, set for a long-running server process.

With CPython's defaults a server with radhub's start-up heap (the R4B models,
the search definitions, the app) spent a second of every ten in the collector
while ingesting transaction Bundles: each full collection walked every object
alive, about 120 ms, and froze reads and writes alike while it did. Two
changes, measured in ``docs/performance.md`` ("FHIR core"):

- ``settle()`` once start-up is done: ``gc.freeze()`` moves everything alive
  then to a permanent generation the collector no longer walks;
- fewer young collections (``GEN0``): a request allocates thousands of
  containers that live for the request; collecting every 700 allocations moved
  them into older generations, which are the costly ones to walk.

Reference counting still frees almost everything at once; only cycles wait
for a collection.
"""

from __future__ import annotations

import gc

GEN0, GEN1, GEN2 = 50_000, 20, 10


def settle() -> None:
    """Call once start-up is complete (in the server and in each worker process)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0, GEN1, GEN2)
