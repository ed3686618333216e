"""The legacy PCM WebSocket's parts that are not the socket: its limits, its config message, the
caller's audio clock and the usage buffer. ``voice.consumers`` wires them to the socket."""
