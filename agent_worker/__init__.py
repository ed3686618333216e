"""The voice agent worker: livekit-agents pipeline, providers and the contract with Django.

Nothing in this package may import Django: it runs in its own process and talks to the
platform only through the payloads defined in ``contracts``.
"""
