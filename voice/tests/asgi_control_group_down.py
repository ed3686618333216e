"""The real ASGI application, served with a channel layer that refuses ``group_add``: a test
server for a legacy socket whose control group cannot be joined (Redis refusing the write)."""

from __future__ import annotations

from typing import Any

from channels.layers import get_channel_layer

from callmissed.asgi import application

__all__ = ["application"]


async def _refuse_group_add(group: str, channel: str, **kwargs: Any) -> None:
    raise ConnectionError(f"injected fault: the channel layer refuses to add {channel} to {group}")


_layer = get_channel_layer()
assert _layer is not None
_layer.group_add = _refuse_group_add  # type: ignore[method-assign]
