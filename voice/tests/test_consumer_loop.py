"""``VoiceAgentConsumer.__call__`` replaces Channels' ``AsyncConsumer.__call__`` with a leaner loop.

It must keep doing what the stock loop does (scope, channel layer and name, ``base_send``,
``StopConsumer`` ends it), so it is pinned to the Channels it was written against: an upgrade
that changes the stock loop fails here, and whoever upgrades re-reads the override against the
new one and re-runs ``bench.ws_sessions`` (which measures both loops) to see whether it still pays.
"""

from __future__ import annotations

import hashlib
import inspect
from importlib.metadata import version

from channels.consumer import AsyncConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import BaseChannelLayer

from voice.consumers import VoiceAgentConsumer

CHANNELS_VERSION = "4.3.2"
# sha256 of inspect.getsource(AsyncConsumer.__call__) in that version.
STOCK_LOOP_SHA256 = "e52238720872dbc3f854519bc971aa7eb41553e63c8729081549ce42465ee419"


def test_the_stock_loop_is_the_one_the_lean_loop_was_written_against() -> None:
    assert version("channels") == CHANNELS_VERSION
    source = inspect.getsource(AsyncConsumer.__call__)
    assert hashlib.sha256(source.encode()).hexdigest() == STOCK_LOOP_SHA256


def test_what_the_lean_loop_relies_on_is_still_there() -> None:
    # The override is the consumer's own; everything else comes from Channels unchanged.
    assert "__call__" in VoiceAgentConsumer.__dict__
    assert AsyncWebsocketConsumer.__call__ is AsyncConsumer.__call__
    # It sets what the stock loop sets, from the same names, and runs the handlers the same way.
    assert VoiceAgentConsumer.channel_layer_alias == AsyncConsumer.channel_layer_alias
    assert VoiceAgentConsumer._sync is False  # the stock loop wraps send only for sync consumers
    assert callable(BaseChannelLayer.new_channel) and callable(BaseChannelLayer.receive)
    assert AsyncWebsocketConsumer.dispatch is AsyncConsumer.dispatch
