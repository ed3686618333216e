"""ASGI entry point (Daphne): Django for HTTP, Channels for the legacy voice WebSocket.

Served by ``python -m callmissed.serve``: one Daphne process, or ``WEB_CONCURRENCY`` of them behind
one port, each running this module, draining its own calls on SIGTERM.

WebSockets pass an origin check and the ``?key=`` authentication middleware before routing.
The origin check is ``AllowedHostsOriginValidator`` except that a connection with no ``Origin``
header is let through: the socket is authenticated by the key in its URL, never by cookies, so
there is no ambient credential for a cross-site page to abuse, and non-browser clients (the
CLI, phone gateways) send no ``Origin``. A browser's ``Origin`` must still be an allowed host.
"""

import logging
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "callmissed.settings")

# Django must be set up before anything imports models (the WebSocket routing does).
django_asgi_app = get_asgi_application()

from typing import Any  # noqa: E402

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator, OriginValidator  # noqa: E402

from accounts.ws_auth import ApiKeyQueryAuthMiddleware  # noqa: E402
from agent_worker.heap import settle_after_startup  # noqa: E402
from voice.routing import websocket_urlpatterns  # noqa: E402


def _fail_websockets_with_a_close_frame() -> None:
    """Make Daphne's WebSocket layer (autobahn) close a broken connection with a close frame.

    Autobahn's server default (``failByDrop``) drops the TCP connection on a frame that breaks
    the protocol, a text message that is not UTF-8 or a message over Daphne's
    ``--websocket-max-message-size``: the client sees 1006 and cannot tell why. With the close
    handshake it gets 1002, 1007 or 1009, as docs/legacy-websocket.md says.

    And the connection ends with a half-close: the close frame and a FIN go out, and whatever the
    client is still sending is read and dropped until it closes its side (or
    ``_LINGER_SECONDS`` pass). A socket closed outright with unread bytes makes the kernel answer
    with a reset, which destroys the close frame still waiting in the client's buffers: a client
    that was mid-way through a large message when the server closed saw 1006 and no reason.
    Daphne has no flag for either; it imports this module before it builds its factory."""
    from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol
    from twisted.internet import reactor

    reset = WebSocketFactory.resetProtocolOptions
    if getattr(reset, "closes_with_a_frame", False):
        return

    def reset_protocol_options(self: WebSocketFactory) -> None:
        reset(self)
        self.failByDrop = False

    close_connection = WebSocketProtocol._closeConnection

    def close_connection_lingering(self: WebSocketProtocol, abort: bool = False) -> None:
        transport = self.transport
        if abort or not hasattr(transport, "loseWriteConnection"):
            close_connection(self, abort)
            return
        transport.loseWriteConnection()
        reactor.callLater(_LINGER_SECONDS, _abort_if_still_open, transport)  # type: ignore[attr-defined,arg-type]

    reset_protocol_options.closes_with_a_frame = True  # type: ignore[attr-defined]
    WebSocketFactory.resetProtocolOptions = reset_protocol_options  # type: ignore[method-assign]
    WebSocketProtocol._closeConnection = close_connection_lingering  # type: ignore[method-assign]


# How long a half-closed connection waits for the client to close its side.
_LINGER_SECONDS = 2.0


def _abort_if_still_open(transport: Any) -> None:
    if getattr(transport, "connected", False):
        transport.abortConnection()


_fail_websockets_with_a_close_frame()


def _drain_before_daphne_stops() -> None:
    """On SIGTERM, let live legacy-socket calls end properly before Daphne cancels them.

    Daphne's shutdown cancels every connection's application at once: a caller mid-sentence
    hears nothing and the session is left for the reaper. Before that, this process refuses new
    calls, waits up to ``DRAIN_WAIT_SECONDS`` for live ones and ends the rest with a spoken
    goodbye (agent_worker/drain.py); Twisted waits for the returned Deferred."""
    import asyncio

    from daphne.server import Server
    from django.conf import settings
    from twisted.internet import defer

    from agent_worker import drain

    kill = Server.kill_all_applications
    if getattr(kill, "drains_first", False):
        return

    def drain_then_kill(self: Server) -> defer.Deferred[Any]:
        drained = defer.Deferred.fromFuture(
            asyncio.ensure_future(drain.LIVE.drain(wait_seconds=settings.DRAIN_WAIT_SECONDS))
        )
        drained.addErrback(lambda failure: logging.getLogger(__name__).error("Drain failed: %s", failure))
        drained.addBoth(lambda _: kill(self))
        return drained

    drain_then_kill.drains_first = True  # type: ignore[attr-defined]
    Server.kill_all_applications = drain_then_kill  # type: ignore[method-assign]


_drain_before_daphne_stops()


class _OriginValidatorAllowingNone(OriginValidator):
    def valid_origin(self, parsed_origin: Any) -> bool:
        return parsed_origin is None or super().valid_origin(parsed_origin)


def _origin_checked(application: Any) -> Any:
    hosts_validator = AllowedHostsOriginValidator(application)
    return _OriginValidatorAllowingNone(application, hosts_validator.allowed_origins)


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": _origin_checked(ApiKeyQueryAuthMiddleware(URLRouter(websocket_urlpatterns))),
    }
)

# Everything the server runs is imported now; live WebSocket conversations share this process.
settle_after_startup()
