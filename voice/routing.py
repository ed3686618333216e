"""WebSocket routes: the legacy PCM voice socket."""

from __future__ import annotations

from django.urls import path

from voice.consumers import VoiceAgentConsumer

websocket_urlpatterns = [
    path("ws/voice-agent", VoiceAgentConsumer.as_asgi()),
    path("ws/voice-agent/", VoiceAgentConsumer.as_asgi()),
]
