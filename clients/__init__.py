"""Command-line clients for CallMissed's APIs."""
