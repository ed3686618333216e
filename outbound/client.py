"""POST to a customer URL through the SSRF guard: each hop's name is resolved and checked once,
the connection goes to that checked address (Host header, TLS SNI and certificate check keep the
name), redirects are followed only after the same check, and the response body is read up to a
small limit. One helper for webhooks and tool calls."""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urljoin

from outbound.ssrf import Destination, DestinationRefused, Networks, Resolver, check_url

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
DEFAULT_MAX_REDIRECTS = 3
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024

__all__ = ["DestinationRefused", "RequestFailed", "Response", "post"]


class RequestFailed(Exception):
    """No HTTP answer: connection refused, TLS failure, timeout, or too many redirects."""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes  # at most max_response_bytes
    url: str  # the URL that answered, after redirects
    elapsed_ms: float


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, destination: Destination, address: str, timeout: float) -> None:
        super().__init__(destination.host, destination.port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, destination: Destination, address: str, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(destination.host, destination.port, timeout=timeout, context=context)
        self._address = address
        self._tls = context

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)


def _send(
    destination: Destination,
    *,
    body: bytes,
    headers: Mapping[str, str],
    deadline: float,
    max_response_bytes: int,
    tls_context: ssl.SSLContext,
) -> tuple[int, bytes, str | None]:
    last_error: Exception | None = None
    for address in destination.addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        connection: http.client.HTTPConnection
        if destination.scheme == "https":
            connection = _PinnedHTTPSConnection(destination, address, remaining, tls_context)
        else:
            connection = _PinnedHTTPConnection(destination, address, remaining)
        # The socket timeout bounds each read; a receiver dripping a byte at a time would pass
        # every one of them. The watchdog cuts the connection when the whole exchange runs out.
        cut = threading.Event()
        watchdog = threading.Timer(remaining, _cut_off, args=(connection, cut))
        watchdog.daemon = True
        watchdog.start()
        try:
            connection.request("POST", destination.target, body=body, headers=dict(headers))
            answer = connection.getresponse()
            answer_body = answer.read(max_response_bytes)
            if not cut.is_set():
                return answer.status, answer_body, answer.getheader("Location")
        except (OSError, http.client.HTTPException) as error:
            last_error = error
            if not isinstance(error, ConnectionRefusedError):
                break  # the request may have reached the server: never send it to a second address
        finally:
            watchdog.cancel()
            connection.close()
        if cut.is_set():
            break
    if last_error is None or time.monotonic() >= deadline:
        raise RequestFailed("Timed out: the receiver did not answer in time.")
    raise RequestFailed(f"{type(last_error).__name__}: {last_error}")


def _cut_off(connection: http.client.HTTPConnection, cut: threading.Event) -> None:
    cut.set()
    if connection.sock is not None:
        with contextlib.suppress(OSError):
            connection.sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked read, unlike close()


def post(
    url: str,
    *,
    body: bytes,
    headers: Mapping[str, str],
    timeout: float = 10.0,
    allowed_networks: Networks = (),
    max_redirects: int = DEFAULT_MAX_REDIRECTS,
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    resolver: Resolver | None = None,
    tls_context: ssl.SSLContext | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Response:
    """POST ``body`` to ``url``. A redirect is followed by POSTing the same body and headers to
    the new location (a signed message means nothing as a GET), after the SSRF check of that hop.
    ``timeout`` bounds the whole exchange, redirects included, not each read.
    Raises ``DestinationRefused`` or ``RequestFailed``; any HTTP status is a ``Response``."""
    context = tls_context or ssl.create_default_context()
    started = clock()
    deadline = time.monotonic() + timeout
    current = url
    for _ in range(max_redirects + 1):
        destination = check_url(
            current, allowed_networks=allowed_networks, **({"resolver": resolver} if resolver else {})
        )
        status, content, location = _send(
            destination,
            body=body,
            headers=headers,
            deadline=deadline,
            max_response_bytes=max_response_bytes,
            tls_context=context,
        )
        if status in REDIRECT_STATUSES and location:
            current = urljoin(current, location)
            continue
        return Response(status=status, body=content, url=current, elapsed_ms=(clock() - started) * 1000)
    raise RequestFailed(f"More than {max_redirects} redirects.")
