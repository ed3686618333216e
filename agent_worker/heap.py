"""Garbage-collector settings for a process that carries live conversations.

The provider clients, livekit-agents, pydantic and (in the server) Django leave hundreds of
thousands of long-lived objects behind at import. CPython's full collection walks all of them,
stopping the event loop, and every session's audio with it, for as long as that takes. Freezing
what start-up left moves it out of the collector's sight, and a larger young generation collects
the per-frame garbage of audio streaming in fewer, still short passes. The measurements behind
these values are in bench/README.md (``pipeline_overhead``).
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
