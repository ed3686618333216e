"""Log lines an operator must see once per process, not once per call.

The offline set is a demo stand-in; saying so on every utterance would drown the log, saying
it never would let someone mistake it for the real providers.
"""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger("agent_worker.providers.offline")

_said: set[str] = set()
_lock = threading.Lock()


def once(key: str, message: str, *args: object) -> bool:
    """Log ``message`` at WARNING the first time ``key`` is seen; True if it was logged now."""
    with _lock:
        if key in _said:
            return False
        _said.add(key)
    logger.warning(message, *args)
    return True


def announce(component: str, what: str) -> None:
    """The "this is not a real provider" line, once per component."""
    once(f"provider:{component}", "offline provider: %s is %s, not a real provider", component, what)
