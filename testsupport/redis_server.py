"""A private ``redis-server`` on a free loopback port, for tests that stop, hang or restart Redis.

The shared Redis other tests use is never touched. ``persistent=True`` keeps the data across a
restart (append-only file, fsync on every write) as a production Redis does; without it a
restart comes back empty, like a replacement instance.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from testsupport.processes import free_port, stop_process, wait_for_listener


def redis_server_available() -> bool:
    return shutil.which("redis-server") is not None


class RedisServer:
    def __init__(self, *, directory: Path, persistent: bool = False) -> None:
        self.port = free_port()
        self.directory = directory
        self.persistent = persistent
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", str(self.directory)]
        args += ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else ["--appendonly", "no"]
        log = (self.directory / "redis.log").open("ab")
        with log:
            self.process = subprocess.Popen(["redis-server", *args], stdout=log, stderr=subprocess.STDOUT)
        if not wait_for_listener(self.process, self.port, timeout=20) or not self._answers_ping(timeout=20):
            self.stop()
            raise RuntimeError(f"redis-server did not start:\n{(self.directory / 'redis.log').read_text()[-2000:]}")
        return self

    def _answers_ping(self, *, timeout: float) -> bool:
        """Listening is not ready: a persistent server loads its append-only file first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        """Shut down as an operator would (SIGTERM; a persistent server has fsynced every write)."""
        if self.process is None:
            return
        self.resume()
        stop_process(self.process)
        self.process = None

    def restart(self) -> RedisServer:
        self.stop()
        return self.start()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open and nothing answers, as in a partition."""
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
