"""A customer's webhook receiver on loopback: a real HTTP server in a thread that records every
request, answers with scripted statuses (a receiver failing on purpose), can redirect, and can
verify signatures itself the way a customer's code would (401 when they do not verify)."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Verifier = Callable[[Mapping[str, str], bytes], Any]


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


@dataclass
class WebhookReceiver:
    host: str = "127.0.0.1"
    default_status: int = 200
    # Statuses for the next requests, in order; then default_status.
    script: list[int] = field(default_factory=list)
    # path → Location answered with 307 instead.
    redirects: dict[str, str] = field(default_factory=dict)
    # Raises (or returns falsy) for a request that does not verify: answered 401.
    verifier: Verifier | None = None
    received: list[Received] = field(default_factory=list)
    verified: list[Any] = field(default_factory=list)
    # Serve HTTPS with this server context (its certificate names the host clients will ask for).
    tls: ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {name.lower(): value for name, value in self.headers.items()}
                with receiver._lock:
                    receiver.received.append(Received(path=self.path, headers=headers, body=body))
                    location = receiver.redirects.get(self.path)
                    status = receiver.script.pop(0) if receiver.script else receiver.default_status
                if location is not None:
                    self._answer(307, b"", {"Location": location})
                    return
                if receiver.verifier is not None:
                    try:
                        event = receiver.verifier(headers, body)
                    except Exception as error:
                        self._answer(401, f"signature refused: {error}".encode())
                        return
                    receiver.verified.append(event)
                self._answer(status, b"ok" if status < 400 else b"receiver failing on purpose")

            def _answer(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((self.host, 0), Handler)
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True)

    def url(self, path: str = "/hook", host: str | None = None) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{host or self.host}:{self.port}{path}"

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
