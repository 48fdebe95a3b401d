"""The garbage collector of a serving process: what its full collections walk, and how often they run.

A full collection holds the event loop for as long as it takes to walk every tracked object: every
stream waits. Two things keep it short and rare:

- What start-up loaded (modules, the app, the agent loop's SDKs, the price catalogue) lives as long as
  the process: frozen, full collections stop walking it (about 200,000 objects).
- The rest of the heap is mostly the open streams' own objects (about 300 per stream), which do not
  die in cycles: a full collection of 200 streams walks about 80,000 objects to find a few hundred
  unreachable ones. Python starts one after every 10 collections of its middle generation, so at
  20 new turns a second one came every 4 to 5 seconds, each 25 to 50 ms on the benchmark machine
  (docs/benchmarks.md, step 16). Every `full_every` of them instead makes those pauses rare, for a
  little more memory held by cyclic garbage until the next one.
"""

from __future__ import annotations

import gc


def settle(full_every: int) -> None:
    """Once start-up has loaded what the process keeps: freeze it, and run full collections only after
    `full_every` collections of the middle generation (Python's default is 10)."""
    # No collection first: it would stall every stream for about 100 ms to find a few hundred objects.
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, full_every)
