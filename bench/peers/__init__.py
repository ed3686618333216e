"""Peer benches: the same conversation in another voice framework, beside ours (README.md)."""
