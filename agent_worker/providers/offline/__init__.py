"""The embedded offline speech set: the default when no provider keys are set.

``OfflineSTT`` (pocketsphinx's bundled en-US model behind an energy VAD), ``OfflineTTS`` (the
piper ``en_US-joe-medium`` voice) and ``ScriptedLLM`` (a deterministic echo, no model at all)
run on the same livekit interfaces as the real clients, with the same events and usage, so a
whole conversation works — and is billed in the same shape — on a machine with no network
access. Each labels itself ``offline`` and logs so once, so nobody mistakes it for the real
thing. Importing this package is cheap: the models load on first use (or ``prewarm``).
"""

from agent_worker.providers.offline.llm import ScriptedLLM
from agent_worker.providers.offline.stt import OfflineSTT
from agent_worker.providers.offline.tts import OfflineTTS

__all__ = ["OfflineSTT", "OfflineTTS", "ScriptedLLM"]
