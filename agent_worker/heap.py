"""Garbage-collector settings for a process that carries live conversations.

The provider clients, livekit-agents, pydantic and (in the server) Django leave hundreds of
thousands of long-lived objects behind at import. CPython's full collection walks all of them:
in a process holding 50 conversations each one stopped the event loop for 180-340 ms, every
session's audio with it, and the collector took 1-1.5 s of the loop's time per 40 s
(bench/pipeline_overhead). Freezing what start-up left moves it out of the collector's sight,
and a larger young generation collects the per-frame garbage of audio streaming in fewer,
still short passes: with both, ~20 collections of at most 25-90 ms and 0.3 s in all for the same
run (a young generation of 50,000 made single passes of up to 130 ms).
"""

from __future__ import annotations

import gc

# Young objects before a collection; then how many young collections per middle one, and middle
# per full one. CPython's defaults are (700, 10, 10), sized for short scripts, not audio loops.
THRESHOLDS = (10_000, 10, 10)


def settle_after_startup() -> None:
    """Call once, when the process has imported what it runs and before it takes calls."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
