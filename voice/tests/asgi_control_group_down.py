"""The real ASGI application, served with a channel layer whose ``group_add`` fails: a test server
for a legacy socket whose control group cannot be joined. ``CONTROL_GROUP_FAULT`` says how:
``refuse`` (Redis refusing the write, the default) or ``hang`` (a frozen Redis that never answers)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from channels.layers import get_channel_layer

from callmissed.asgi import application

__all__ = ["application"]


async def _refuse_group_add(group: str, channel: str, **kwargs: Any) -> None:
    raise ConnectionError(f"injected fault: the channel layer refuses to add {channel} to {group}")


async def _hang_group_add(group: str, channel: str, **kwargs: Any) -> None:
    await asyncio.Event().wait()


_layer = get_channel_layer()
assert _layer is not None
_faults = {"refuse": _refuse_group_add, "hang": _hang_group_add}
_layer.group_add = _faults[os.environ.get("CONTROL_GROUP_FAULT", "refuse")]  # type: ignore[method-assign]
