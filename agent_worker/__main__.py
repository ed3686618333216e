"""``python -m agent_worker start`` runs the LiveKit agent worker (``dev`` reloads on change)."""

from agent_worker.worker import main

main()
