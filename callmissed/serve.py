"""The platform's web server: ``WEB_CONCURRENCY`` Daphne processes behind one port.

    python -m callmissed.serve [--host 127.0.0.1] [--port 8000] [application]

A legacy-socket call runs its whole conversation in the server process that accepted it, and one
Python process uses one core: a machine's cores serve calls (and REST requests) only with a
process each. Daphne with this small supervisor rather than another server's own process manager
(measured in bench/README.md, ``ws_sessions``): Uvicorn closes every WebSocket (1012) the moment a
stop begins and Hypercorn cancels them after its grace period, both before the application hears
of the stop (the ASGI lifespan ``shutdown`` comes last), so a live caller would be cut off
mid-sentence instead of hearing the goodbye; and the socket's close behaviour
(callmissed/asgi.py) is Daphne's.

This process opens one listening socket per child on the same port (``SO_REUSEPORT``) and starts
each child with its socket inherited (``daphne --fd``): the kernel spreads new connections evenly
over the sockets. One socket shared by all would hand a new call to whichever process wakes
first, which is most often the one already busy with calls. A replacement child takes over its
predecessor's socket, so connections waiting there are served, a few seconds late. Nothing else
is shared: a call's control messages (REST ``DELETE``, billing stops, key revocation) reach it
over the Redis channel layer whichever process holds it, which is why settings refuse more than
one process without ``REDIS_URL``.

SIGTERM or SIGINT is passed to every child; each drains its own calls (refuses new ones, waits
``DRAIN_WAIT_SECONDS``, ends the rest with a spoken goodbye and close 4503) and exits, and this
process exits once all have. A child that dies by itself (the OOM killer, a crash) is started
again, unless it exited with an error while starting (a broken configuration would be restarted
for ever): then the whole server stops. A child whose supervisor is killed drains and exits too.

With one process (development, ``make run``) there is no supervisor: this process is the Daphne.
"""

from __future__ import annotations

import argparse
import logging
import logging.config
import os
import signal
import socket
import subprocess
import sys
import time

from agent_worker import logs
from callmissed import metrics
from callmissed.config import platform_settings, web_processes

logger = logging.getLogger("callmissed.serve")

APPLICATION = "callmissed.asgi:application"
# A child that exits with an error sooner than this after its start failed to start (a bad
# setting, a missing module): restarting it would fail again, for ever.
STARTUP_SECONDS = 20.0
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def run_daphne(listen: list[str], application: str) -> None:
    """Daphne in this process, listening as ``listen`` says, with the legacy socket's limits."""
    from daphne.cli import CommandLineInterface

    from voice.legacy.protocol import MAX_MESSAGE_BYTES

    size = str(MAX_MESSAGE_BYTES)
    CommandLineInterface().run(
        [*listen, "--websocket-max-message-size", size, "--websocket-max-frame-size", size, application]
    )


def _stop_with_the_supervisor() -> None:
    """A child whose supervisor is killed gets SIGTERM (it drains and exits) instead of serving on
    alone, holding the port, where nothing would ever stop it."""
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def listening_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` sockets listening on the same address; the kernel balances connections over them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets = []
    for _ in range(count):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sockets.append(sock)
    return sockets


def supervise(sockets: list[socket.socket], application: str) -> int:
    """Run one Daphne child per socket until a stop signal; 1 if any of them failed, else 0."""
    children: dict[int, tuple[subprocess.Popen[bytes], float, int]] = {}
    stopping = False
    failed = 0

    def start(slot: int) -> None:
        fd = sockets[slot].fileno()
        argv = [sys.executable, "-m", "callmissed.serve", "--fd", str(fd), application]
        # A process group of its own: a terminal's Ctrl-C reaches the children once, from here.
        child = subprocess.Popen(argv, pass_fds=(fd,), process_group=0)  # noqa: S603  (our own argv)
        children[child.pid] = (child, time.monotonic(), slot)
        if stopping:  # a stop that arrived while this one was being replaced: it must drain too
            child.send_signal(signal.SIGTERM)

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        if not stopping:
            logger.info("Stopping %d server process(es): each drains its calls", len(children))
        stopping = True
        for child, _, _ in children.values():
            child.send_signal(signal.SIGTERM)

    for sig in _STOP_SIGNALS:
        signal.signal(sig, stop)
    for slot in range(len(sockets)):
        start(slot)
    logger.info("Serving on %s with %d processes", sockets[0].getsockname(), len(sockets))
    while children:
        pid, status = os.wait()
        if pid not in children:
            continue
        child, started, slot = children.pop(pid)
        child.returncode = code = os.waitstatus_to_exitcode(status)
        _forget_metrics_of(pid)
        if stopping:
            failed = max(failed, 1 if code else 0)
            continue
        if code > 0 and time.monotonic() - started < STARTUP_SECONDS:
            logger.error("Server process %d failed while starting (exit %d): stopping", pid, code)
            stop(signal.SIGTERM, None)
            failed = 1
            continue
        logger.error("Server process %d exited (%d): starting another", pid, code)
        start(slot)
    return failed


def _forget_metrics_of(pid: int) -> None:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--fd", type=int, help=argparse.SUPPRESS)  # a child: the inherited listening socket
    parser.add_argument("application", nargs="?", default=APPLICATION)
    args = parser.parse_args(argv)
    if args.fd is not None:
        _stop_with_the_supervisor()
        run_daphne(["--fd", str(args.fd)], args.application)
        return 0
    env = platform_settings()
    processes = web_processes(env.web_concurrency, production=env.django_env == "production")
    metrics.fresh_multiprocess_directory()
    if processes == 1:
        run_daphne(["-b", args.host, "-p", str(args.port)], args.application)
        return 0
    # The same lines as every other process writes (JSON by default, secrets redacted).
    logging.config.dictConfig(logs.dict_config(level=env.log_level, json_lines=env.log_format == "json"))
    sockets = listening_sockets(args.host, args.port, processes)
    try:
        return supervise(sockets, args.application)
    finally:
        for sock in sockets:
            sock.close()


if __name__ == "__main__":
    sys.exit(main())
