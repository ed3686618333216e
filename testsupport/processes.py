"""Starting and stopping our own servers (Daphne, Redis, Celery) as child processes for tests and benchmarks."""

from __future__ import annotations

import socket
import subprocess
import time


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_listener(process: subprocess.Popen[bytes], port: int, *, timeout: float = 60.0) -> bool:
    """Wait until ``process`` accepts connections on 127.0.0.1:``port``; False if it exited
    first or ``timeout`` passed (a server that never listens must not hang the caller)."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def stop_process(process: subprocess.Popen[bytes], *, timeout: float = 20.0) -> None:
    """Stop ``process`` as an operator would (SIGTERM), killing it if it has not exited by ``timeout``."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
