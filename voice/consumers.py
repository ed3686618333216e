"""The legacy PCM WebSocket ``/ws/voice-agent?key=cm_…``: one voice session per socket.

The protocol (messages, close codes, limits) is written down in docs/legacy-websocket.md; the
constants below are the ones it documents. The socket runs the very same ``Conversation`` as
the LiveKit worker, in this process: caller PCM goes straight from ``receive`` into a
``QueueAudioInput`` and the agent's PCM straight from a ``CallbackAudioOutput`` to ``send`` —
never through the channel layer. The session row is an ordinary one (transport ``websocket``):
it is admitted by ``voice_session_create`` and the conversation's events are applied through the
same task bodies the worker's Celery events run, called in-process.

The channel layer carries control only: the consumer joins ``voice-session.<id>`` and ends the
conversation on ``session.terminate`` (REST DELETE, billing, key revocation). A call that cannot
join is refused; one whose control message is lost still stops, as ``_tick`` reads its own row
every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any

from autobahn.exception import Disconnected
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import InterfaceError, OperationalError

from accounts.ws_auth import SCOPE_KEY, WsKeyAuth
from agent_worker import contracts
from agent_worker.audio_io import CallbackAudioOutput, QueueAudioInput
from agent_worker.conversation import Conversation, ConversationEnded, ConversationObserver, TranscriptEvent

# The provider clients are imported with the routing, at server start: imported lazily by the
# first caller's session they would stall every live socket on this event loop for seconds.
from agent_worker.providers import llm as _llm_clients  # noqa: F401
from agent_worker.providers import sarvam_stt as _stt_client  # noqa: F401
from agent_worker.providers import sarvam_tts as _tts_client  # noqa: F401
from callmissed import jsonsafe
from callmissed.errors import ApplicationError, ErrorCode
from voice import selectors, services, tasks
from voice.config import SessionConfigSerializer
from voice.ws_control import group_join, session_group

logger = logging.getLogger(__name__)

SUPPORTED_SAMPLE_RATES = (8000, 16000, 24000)
DEFAULT_SAMPLE_RATE = 16000
# Sarvam's streaming STT takes 8 or 16 kHz: a 24 kHz socket runs its providers at 16 kHz and the
# session resamples both ways.
_PIPELINE_RATE = {8000: 8000, 16000: 16000, 24000: 16000}
CONFIG_FIELDS_WS_ONLY = ("type", "sample_rate")
# A config is a few hundred bytes and the control messages fewer: a longer text message is
# refused before it is parsed.
MAX_TEXT_MESSAGE_BYTES = 64 * 1024
# What Daphne is started with (--websocket-max-message-size): it reads a whole message before
# the consumer sees it, so a larger one is refused there, with 1009.
MAX_MESSAGE_BYTES = 1024 * 1024


class CloseCode(IntEnum):
    NORMAL = 1000  # the session ended (see session.ended's reason)
    # Sent by Daphne's WebSocket layer itself, with no error event: a frame that breaks the
    # protocol, a text message that is not UTF-8, a message over MAX_MESSAGE_BYTES.
    WS_PROTOCOL_VIOLATION = 1002
    WS_INVALID_PAYLOAD = 1007
    WS_MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    KEY_MISSING = 4001
    KEY_INVALID = 4002
    KEY_REVOKED = 4003  # revoked or expired
    PROTOCOL_ERROR = 4400
    PAYMENT_REQUIRED = 4402  # refused at admission, or ended for insufficient funds
    CONFIG_TIMEOUT = 4408
    AUDIO_TOO_FAST = 4409
    FRAME_TOO_LARGE = 4413
    INVALID_AUDIO = 4415
    INVALID_CONFIG = 4422
    CONCURRENCY_LIMIT = 4429
    CAPACITY_EXHAUSTED = 4503
    # The same code: the server cannot run the call safely right now (its control channel is down).
    SERVICE_UNAVAILABLE = 4503


class WsErrorCode(StrEnum):
    """``error`` event codes of the socket's own; the rest are the REST API's ``ErrorCode``s."""

    PROTOCOL_ERROR = "protocol_error"
    CONFIG_TIMEOUT = "config_timeout"
    AUDIO_TOO_FAST = "audio_too_fast"
    AUDIO_UNDERRUN = "audio_underrun"
    AUDIO_DROPPED = "audio_dropped"
    FRAME_TOO_LARGE = "frame_too_large"
    INVALID_AUDIO = "invalid_audio"
    PROVIDER_ERROR = "provider_error"


_AUTH_CLOSE = {
    ErrorCode.UNAUTHENTICATED: CloseCode.KEY_MISSING,
    ErrorCode.INVALID_API_KEY: CloseCode.KEY_INVALID,
    ErrorCode.REVOKED_API_KEY: CloseCode.KEY_REVOKED,
    ErrorCode.EXPIRED_API_KEY: CloseCode.KEY_REVOKED,
}
_ADMISSION_CLOSE = {
    **_AUTH_CLOSE,  # the key revoked or expired between the connect and the config
    ErrorCode.PAYMENT_REQUIRED: CloseCode.PAYMENT_REQUIRED,
    ErrorCode.CONCURRENCY_LIMIT: CloseCode.CONCURRENCY_LIMIT,
    ErrorCode.RATE_LIMITED: CloseCode.CONCURRENCY_LIMIT,
    ErrorCode.CAPACITY_EXHAUSTED: CloseCode.CAPACITY_EXHAUSTED,
    ErrorCode.VALIDATION_ERROR: CloseCode.INVALID_CONFIG,
}
_END_CLOSE = {
    contracts.EndReason.INSUFFICIENT_FUNDS: CloseCode.PAYMENT_REQUIRED,
    contracts.EndReason.PROVIDER_ERROR: CloseCode.INTERNAL_ERROR,
    contracts.EndReason.ERROR: CloseCode.INTERNAL_ERROR,
    contracts.EndReason.KEY_REVOKED: CloseCode.KEY_REVOKED,
}
# The error event owed before a close other than 1000 when nothing has said why yet.
_END_ERROR = {
    contracts.EndReason.INSUFFICIENT_FUNDS: str(ErrorCode.PAYMENT_REQUIRED),
    contracts.EndReason.PROVIDER_ERROR: str(WsErrorCode.PROVIDER_ERROR),
}


_TICK_SECONDS = 0.1
# Joining the session's control group is retried after these pauses before the call is refused.
_CONTROL_JOIN_RETRY_SECONDS = (0.25, 0.5)
CONTROL_UNAVAILABLE_RETRY_AFTER_SECONDS = 5


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


@dataclass(frozen=True)
class LegacyWsLimits:
    """The socket's limits; each is documented and overridable by the environment variable named."""

    config_timeout_seconds: float = 10.0  # LEGACY_WS_CONFIG_TIMEOUT_SECONDS
    max_frame_seconds: float = 1.0  # LEGACY_WS_MAX_FRAME_SECONDS
    # How far the client's audio may run ahead of the wall clock (bursts, network jitter).
    max_ahead_seconds: float = 2.0  # LEGACY_WS_MAX_AHEAD_SECONDS
    # How far behind the client may fall before the gap is filled with silence.
    underrun_fill_seconds: float = 0.5  # LEGACY_WS_UNDERRUN_FILL_SECONDS
    # Caller audio the pipeline may fall behind by before the oldest is dropped.
    input_buffer_seconds: float = 3.0  # LEGACY_WS_INPUT_BUFFER_SECONDS
    usage_report_seconds: float = 5.0  # LEGACY_WS_USAGE_REPORT_SECONDS
    # How often a call reads its own row, so one ended elsewhere stops even if the control
    # message to this socket was lost.
    session_check_seconds: float = 2.0  # LEGACY_WS_SESSION_CHECK_SECONDS

    @classmethod
    def from_env(cls) -> LegacyWsLimits:
        return cls(
            config_timeout_seconds=_env_float("LEGACY_WS_CONFIG_TIMEOUT_SECONDS", cls.config_timeout_seconds),
            max_frame_seconds=_env_float("LEGACY_WS_MAX_FRAME_SECONDS", cls.max_frame_seconds),
            max_ahead_seconds=_env_float("LEGACY_WS_MAX_AHEAD_SECONDS", cls.max_ahead_seconds),
            underrun_fill_seconds=_env_float("LEGACY_WS_UNDERRUN_FILL_SECONDS", cls.underrun_fill_seconds),
            input_buffer_seconds=_env_float("LEGACY_WS_INPUT_BUFFER_SECONDS", cls.input_buffer_seconds),
            usage_report_seconds=_env_float("LEGACY_WS_USAGE_REPORT_SECONDS", cls.usage_report_seconds),
            session_check_seconds=_env_float("LEGACY_WS_SESSION_CHECK_SECONDS", cls.session_check_seconds),
        )

    def max_frame_bytes(self, sample_rate: int) -> int:
        return int(sample_rate * self.max_frame_seconds) * 2


class ConfigInvalid(Exception):
    def __init__(self, fields: dict[str, list[str]]) -> None:
        self.fields = fields
        name, messages = next(iter(fields.items()))
        self.message = f"{name}: {messages[0]}"
        super().__init__(self.message)


def parse_config(message: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The REST body fields validated by the REST serializer, plus the socket's ``sample_rate``."""
    errors: dict[str, list[str]] = {}
    rate = message.get("sample_rate", DEFAULT_SAMPLE_RATE)
    if isinstance(rate, bool) or not isinstance(rate, int) or rate not in SUPPORTED_SAMPLE_RATES:
        accepted = ", ".join(map(str, SUPPORTED_SAMPLE_RATES))
        errors["sample_rate"] = [f"Unsupported sample rate {rate!r}. Accepted values: {accepted}."]
    body = {k: v for k, v in message.items() if k not in CONFIG_FIELDS_WS_ONLY}
    serializer = SessionConfigSerializer(data=body)
    if not serializer.is_valid():
        for name, messages in serializer.errors.items():
            errors[str(name)] = [str(m) for m in messages]
    if errors:
        raise ConfigInvalid(dict(sorted(errors.items(), key=lambda item: item[0] == "sample_rate")))
    return dict(serializer.validated_data), rate


class _BadNumber:
    """A number the strict reader refuses, kept in place so the field holding it can be named."""

    def __init__(self, text: str) -> None:
        self.text = text

    @staticmethod
    def refuse(value: Any) -> Any:
        if isinstance(value, _BadNumber):
            raise jsonsafe.UnsafeJson(f"The number {value.text[:32]} is out of range.")
        raise TypeError(type(value).__name__)


def _finite_or_bad(text: str) -> float | _BadNumber:
    value = float(text)
    return value if math.isfinite(value) else _BadNumber(text)


def unsafe_config_fields(text: str) -> dict[str, list[str]]:
    """The fields of a config message that ``jsonsafe`` refused, each with the reason.

    A config object whose ``metadata`` holds a NUL or whose ``sample_rate`` is ``1e400`` is a
    field error for the client to fix (4422, as the REST API's 400 names the field), not an
    unreadable message (4400). Empty when the text is not otherwise a config object, or when what
    is wrong cannot be pinned on one field name that is itself fit to send back."""
    try:
        message = json.loads(text, parse_float=_finite_or_bad, parse_constant=_BadNumber)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(message, dict) or message.get("type") != "config":
        return {}
    fields: dict[str, list[str]] = {}
    for name, value in message.items():
        try:
            jsonsafe.loads(json.dumps(name))
        except ValueError:
            return {}  # a name with a NUL or a lone surrogate cannot be sent back as a field
        try:
            # Re-encoded (NUL and surrogates escaped, bad numbers refused on the way) and read
            # back strictly, one level down (in a list) as it is inside the message.
            jsonsafe.loads(json.dumps([value], default=_BadNumber.refuse))
        except jsonsafe.UnsafeJson as error:
            fields[name] = [str(error)]
        except (ValueError, RecursionError):
            fields[name] = [f"Nested more than {jsonsafe.MAX_DEPTH} levels deep."]
    return fields


_RETRYABLE_DB_ERRORS = (OperationalError, InterfaceError)
_DB_ATTEMPTS = 3


async def apply_event(task: Any, event: contracts.WorkerEvent) -> None:
    """Apply a worker event through its Celery task's body, in-process, as the worker's events are.

    A database blip is retried here at once; anything that still fails (a missing price, a
    database that stays away) is handed to Celery with the event id as task id, so the task's own
    retries apply it later. The task bodies apply each event id once, so neither path doubles it."""
    payload = event.model_dump(mode="json")
    for attempt in range(1, _DB_ATTEMPTS + 1):
        try:
            await database_sync_to_async(task)(payload)
            return
        except _RETRYABLE_DB_ERRORS:
            if attempt == _DB_ATTEMPTS:
                break
            await asyncio.sleep(0.5 * attempt)
        except Exception:
            break
    logger.warning(
        "Applying %s %s for session %s in-process failed; queueing it for Celery",
        type(event).__name__,
        event.event_id,
        event.session_id,
        exc_info=True,
    )
    try:
        await database_sync_to_async(task.apply_async)(kwargs={"payload": payload}, task_id=event.event_id)
    except Exception:
        logger.exception("Could not queue %s %s for session %s", type(event).__name__, event.event_id, event.session_id)


class _Phase(StrEnum):
    AWAITING_CONFIG = "awaiting_config"
    RUNNING = "running"
    ENDING = "ending"  # the conversation is closing; further audio is ignored
    CLOSED = "closed"


class _SocketObserver(ConversationObserver):
    def __init__(self, consumer: VoiceAgentConsumer) -> None:
        self._consumer = consumer

    async def on_transcript(self, event: TranscriptEvent) -> None:
        await self._consumer.on_transcript(event)

    async def on_agent_state(self, state: str) -> None:
        await self._consumer.on_agent_state(state)

    async def on_interrupted(self) -> None:
        await self._consumer.send_event({"type": "interrupted"})

    async def on_usage(self, items: list[contracts.UsageItem]) -> None:
        await self._consumer.on_usage(items)

    async def on_error(self, message: str, *, recoverable: bool) -> None:
        log = logger.warning if recoverable else logger.error
        log("Legacy WS session %s: %s", self._consumer.session_id, message)
        await self._consumer.send_error(WsErrorCode.PROVIDER_ERROR, message, fatal=not recoverable)

    async def on_ended(self, ended: ConversationEnded) -> None:
        await self._consumer.on_ended(ended)


class VoiceAgentConsumer(AsyncWebsocketConsumer):
    """One socket, one session. Handlers stay short: Channels runs them one at a time per socket."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = LegacyWsLimits.from_env()
        self.session_id = ""
        self.sample_rate = DEFAULT_SAMPLE_RATE
        self._phase = _Phase.AWAITING_CONFIG
        self._socket_open = False
        self._close_code: CloseCode | None = None
        self._config_timer: asyncio.TimerHandle | None = None
        self._conversation: Conversation | None = None
        self._audio_in: QueueAudioInput | None = None
        self._audio_out: CallbackAudioOutput | None = None
        self._group = ""
        self._background: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._finished = asyncio.Event()
        # The caller's audio clock: seconds received, measured against the config's arrival for
        # "too fast"; with the silence filled in, against the session's start for "too slow" —
        # lenient both ways about the time the session took to create. Filled silence never
        # counts as the caller's: when this server falls behind, the frames waiting in the socket
        # arrive in a burst after the fill, and that is our lag, not a client sending too fast.
        self._clock_origin = 0.0
        self._fill_origin = 0.0
        self._client_seconds = 0.0
        self._filled_seconds = 0.0
        self._max_frame_bytes = 0
        self._underrun_reported = False
        self._dropped_reported = 0.0
        # Usage deltas not yet applied to the database, and the running totals shown to the client.
        self._usage_pending: dict[tuple[str, str, str], float] = {}
        self._usage_totals: dict[tuple[str, str, str], float] = {}
        self._usage_lock = asyncio.Lock()
        self._usage_flushed_at = 0.0
        self._row_checked_at = 0.0
        self._agent_speaking = False
        self._fatal_error_sent = False

    # ------------------------------------------------------------------ Channels plumbing

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """``AsyncConsumer.__call__`` with a leaner loop. Channels waits on the client and the
        channel layer together with a new task and an ``asyncio.wait`` for every message; at 50
        audio frames a second per socket that bookkeeping costs more than the frames. Here the
        client's messages are read in a plain loop, and the channel layer — control messages
        only, a few per session — by a task beside it."""
        if os.environ.get("AB_CHANNELS_LOOP"):
            return await super().__call__(scope, receive, send)
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.base_send = send
        control: asyncio.Task[None] | None = None
        if self.channel_layer is not None:
            self.channel_name = await self.channel_layer.new_channel()
            control = asyncio.get_running_loop().create_task(self._receive_control_messages())
        try:
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass
        finally:
            if control is not None:
                control.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await control

    async def _receive_control_messages(self) -> None:
        assert self.channel_layer is not None
        rejoin = False
        while True:
            try:
                if rejoin and self._group:
                    # A Redis that restarted empty forgot the group: without this, DELETE and
                    # billing could no longer reach the call.
                    await group_join(self.channel_layer, self._group, self.channel_name)
                rejoin = False
                message = await self.channel_layer.receive(self.channel_name)
            except asyncio.CancelledError:
                raise
            except Exception:
                # A broker blip must not take the call down with it; control resumes when it is back.
                logger.warning("Legacy WS session %s: channel layer receive failed", self.session_id, exc_info=True)
                rejoin = True
                await asyncio.sleep(1.0)
                continue
            try:
                await self.dispatch(message)
            except Exception:
                logger.exception(
                    "Legacy WS session %s: control message %r failed", self.session_id, message.get("type")
                )

    async def dispatch(self, message: dict[str, Any]) -> None:
        try:
            await self._dispatch(message)
        except StopConsumer:
            raise
        except Exception:
            logger.exception("Legacy WS session %s: handling %r failed", self.session_id or "-", message.get("type"))
            await self._internal_error()
            if message.get("type") == "websocket.disconnect":
                raise StopConsumer() from None

    async def _internal_error(self) -> None:
        """A handler raised: say so and close with 1011 and a close frame, the session ended as
        failed. Left to Daphne, the exception would close the socket with no error event and leave
        a running conversation and its session row behind."""
        message = "The server failed while handling your message; the session has ended."
        try:
            if self._conversation is not None:
                if self._phase is _Phase.RUNNING:
                    self._phase = _Phase.ENDING
                    self._close_code = CloseCode.INTERNAL_ERROR
                    await self.send_error(ErrorCode.INTERNAL_ERROR, message, fatal=True)
                    self._spawn(self._conversation.end(contracts.EndReason.ERROR, error=message))
                return  # otherwise the conversation is already ending, and closes the socket
            if self.session_id:
                await self._end_row_that_never_ran(self.session_id, contracts.EndReason.ERROR, error=message)
            await self._refuse(CloseCode.INTERNAL_ERROR, ErrorCode.INTERNAL_ERROR, message)
        except Exception:
            logger.exception("Legacy WS session %s: reporting an internal error failed", self.session_id or "-")

    async def _dispatch(self, message: dict[str, Any]) -> None:
        # Channels closes stale DB connections before every message with a hop to the one
        # sync thread; at 50 audio frames a second per socket that thread becomes the server's
        # bottleneck. This consumer reaches the ORM only through database_sync_to_async, which
        # does the same cleanup around each call, so frames skip the hop.
        if message.get("type") == "websocket.receive":
            await self.websocket_receive(message)
            return
        await super().dispatch(message)

    async def connect(self) -> None:
        await self.accept()
        self._socket_open = True
        auth: WsKeyAuth | None = self.scope.get(SCOPE_KEY)
        if auth is None or not auth.ok:
            code = auth.error_code if auth is not None and auth.error_code else ErrorCode.UNAUTHENTICATED
            message = auth.message if auth is not None else "Authentication is not configured for this socket."
            await self._refuse(_AUTH_CLOSE.get(code, CloseCode.KEY_INVALID), str(code), message)
            return
        loop = asyncio.get_running_loop()
        self._config_timer = loop.call_later(self.limits.config_timeout_seconds, self._on_config_timeout)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self._phase is _Phase.AWAITING_CONFIG:
            await self._receive_config(text_data, bytes_data)
        elif self._phase is _Phase.RUNNING:
            if bytes_data is not None:
                await self._receive_audio(bytes_data)
            else:
                await self._receive_control(text_data or "")
        # ENDING / CLOSED: the session is closing; what the client still sends is ignored.

    async def disconnect(self, code: int) -> None:
        self._socket_open = False
        if self._config_timer is not None:
            self._config_timer.cancel()
        if self._phase is _Phase.AWAITING_CONFIG:
            self._phase = _Phase.CLOSED
            return
        if self._conversation is not None:
            self._spawn(self._conversation.end(contracts.EndReason.USER_LEFT))
            # Shielded: if Daphne gives up waiting for this consumer, the session still closes.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._finished.wait())

    async def session_terminate(self, event: dict[str, Any]) -> None:
        """Channel-layer control message ``{"type": "session.terminate", "reason": …}``."""
        try:
            reason = contracts.EndReason(event.get("reason", ""))
        except ValueError:
            reason = contracts.EndReason.ERROR
        logger.info("Legacy WS session %s terminated: %s", self.session_id, reason)
        if self._conversation is not None:
            self._spawn(self._conversation.end(reason))

    # ------------------------------------------------------------------ before the session

    async def _refuse(
        self,
        close: CloseCode,
        code: str,
        message: str,
        fields: dict[str, Any] | None = None,
        retry_after: int | None = None,
    ) -> None:
        """An error before any session exists: say why, close, keep nothing."""
        self._phase = _Phase.CLOSED
        if self._config_timer is not None:
            self._config_timer.cancel()
        await self.send_error(code, message, fatal=True, fields=fields, retry_after=retry_after)
        await self._close_socket(close)

    def _on_config_timeout(self) -> None:
        if self._phase is _Phase.AWAITING_CONFIG:
            seconds = self.limits.config_timeout_seconds
            self._spawn(
                self._refuse(
                    CloseCode.CONFIG_TIMEOUT,
                    WsErrorCode.CONFIG_TIMEOUT,
                    f"No config message within {seconds:g} s of connecting.",
                )
            )

    async def _receive_config(self, text_data: str | None, bytes_data: bytes | None) -> None:
        # The caller's audio clock starts with the config: a client may stream right after it,
        # and what it sends while the session is being created is not "ahead" of real time.
        self._clock_origin = time.monotonic()
        # A config is in hand: the timer must not refuse the socket while the row is created.
        if self._config_timer is not None:
            self._config_timer.cancel()
        if text_data is None:
            await self._refuse(
                CloseCode.PROTOCOL_ERROR,
                WsErrorCode.PROTOCOL_ERROR,
                'Audio before the config message: send {"type": "config", …} first.',
            )
            return
        if _text_too_long(text_data):
            await self._refuse(CloseCode.FRAME_TOO_LARGE, WsErrorCode.FRAME_TOO_LARGE, _TEXT_TOO_LONG)
            return
        try:
            message = jsonsafe.loads(text_data)
        except jsonsafe.UnsafeJson as error:
            fields = unsafe_config_fields(text_data)
            if fields:
                name, reasons = next(iter(fields.items()))
                await self._refuse(
                    CloseCode.INVALID_CONFIG, ErrorCode.VALIDATION_ERROR, f"{name}: {reasons[0]}", fields
                )
            else:
                await self._refuse(
                    CloseCode.PROTOCOL_ERROR,
                    WsErrorCode.PROTOCOL_ERROR,
                    f'The first message must be a JSON object {{"type": "config", …}}: {error}',
                )
            return
        if not isinstance(message, dict) or message.get("type") != "config":
            await self._refuse(
                CloseCode.PROTOCOL_ERROR,
                WsErrorCode.PROTOCOL_ERROR,
                'The first message must be a JSON object {"type": "config", …}.',
            )
            return
        try:
            config, rate = parse_config(message)
        except ConfigInvalid as error:
            await self._refuse(CloseCode.INVALID_CONFIG, ErrorCode.VALIDATION_ERROR, error.message, error.fields)
            return
        auth: WsKeyAuth = self.scope[SCOPE_KEY]
        assert auth.api_key is not None
        try:
            created = await database_sync_to_async(services.voice_session_create)(
                organization=auth.api_key.organization,
                api_key=auth.api_key,
                config=config,
                transport=contracts.Transport.WEBSOCKET,
            )
        except ApplicationError as error:
            close = _ADMISSION_CLOSE.get(error.code, CloseCode.PROTOCOL_ERROR)
            await self._refuse(close, str(error.code), error.message, error.fields or None, error.retry_after)
            return
        if self._config_timer is not None:
            self._config_timer.cancel()
        if not self._socket_open:
            # The client left while the row was being created.
            await self._end_row_that_never_ran(str(created.session.id), contracts.EndReason.USER_LEFT)
            self._phase = _Phase.CLOSED
            return
        await self._start_session(str(created.session.id), created.session.config(), rate)

    # ------------------------------------------------------------------ the session

    async def _start_session(self, session_id: str, config: contracts.SessionConfig, rate: int) -> None:
        self.session_id = session_id
        if not await self._join_control_group():
            await self._refuse_uncontrollable()
            return
        self.sample_rate = rate
        self._max_frame_bytes = self.limits.max_frame_bytes(rate)
        self._audio_in = QueueAudioInput(sample_rate=rate, max_buffered_seconds=self.limits.input_buffer_seconds)
        self._audio_out = CallbackAudioOutput(sample_rate=rate, on_audio=self._send_audio)
        conversation = Conversation(
            session_id=session_id,
            config=config,
            providers=settings.PROVIDERS,
            observer=_SocketObserver(self),
            sample_rate=_PIPELINE_RATE[rate],
            idle_timeout_seconds=settings.AGENT_IDLE_TIMEOUT_SECONDS,
            goodbye_lead_seconds=settings.AGENT_GOODBYE_LEAD_SECONDS,
        )
        self._conversation = conversation
        self._phase = _Phase.RUNNING
        await self.send_event(
            {
                "type": "session.started",
                "session_id": session_id,
                "sample_rate": rate,
                "max_frame_bytes": self._max_frame_bytes,
                "max_duration_seconds": config.max_duration_seconds,
                "providers": conversation.providers_label,
            }
        )
        try:
            await conversation.start(audio_input=self._audio_in, audio_output=self._audio_out)
        except Exception as error:
            logger.exception("Legacy WS session %s could not start", session_id)
            self._close_code = CloseCode.INTERNAL_ERROR
            self._spawn(conversation.end(contracts.EndReason.ERROR, error=f"The agent could not start: {error}"))
            return
        if conversation.ended is not None:
            return
        # The caller's frames wait unread while the pipeline starts (the first session of a
        # process loads the offline models): the underrun clock starts once they can be heard.
        self._fill_origin = self._usage_flushed_at = self._row_checked_at = time.monotonic()
        self._ticker = asyncio.get_running_loop().create_task(self._tick(), name=f"legacy-ws-tick-{session_id}")
        await apply_event(
            tasks.session_started,
            contracts.SessionStarted(session_id=session_id, providers=conversation.providers_label),
        )

    async def _join_control_group(self) -> bool:
        """Join ``voice-session.<id>``, through which DELETE, billing and key revocation stop
        this call; retried briefly, since a call nothing can stop must not start."""
        if self.channel_layer is None:
            return True  # no channel layer configured: the row check in ``_tick`` is the only stop
        group = session_group(self.session_id)
        for pause in (*_CONTROL_JOIN_RETRY_SECONDS, None):
            try:
                await group_join(self.channel_layer, group, self.channel_name)
            except Exception:
                logger.warning("Legacy WS session %s could not join its control group", self.session_id, exc_info=True)
                if pause is None:
                    return False
                await asyncio.sleep(pause)
            else:
                self._group = group
                return True
        return False

    async def _refuse_uncontrollable(self) -> None:
        """The session row exists but its call could not be made stoppable: end it as failed (the
        slot is freed), then say so and close with 4503 so the client retries shortly."""
        self._phase = _Phase.CLOSED
        message = "The server could not set up this call's control channel. Try again in a few seconds."
        logger.error("Legacy WS session %s refused: its control group could not be joined", self.session_id)
        await self._end_row_that_never_ran(self.session_id, contracts.EndReason.ERROR, error=message)
        await self.send_error(
            ErrorCode.SERVICE_UNAVAILABLE, message, fatal=True, retry_after=CONTROL_UNAVAILABLE_RETRY_AFTER_SECONDS
        )
        await self._send_session_ended(contracts.EndReason.ERROR, duration_seconds=0.0, error=message)
        await self._close_socket(CloseCode.SERVICE_UNAVAILABLE)
        self._finished.set()

    async def _end_row_that_never_ran(self, session_id: str, reason: contracts.EndReason, *, error: str = "") -> None:
        """Close the row of a session no conversation ran (it frees its slot), as the worker would."""
        await apply_event(
            tasks.session_ended,
            contracts.SessionEnded(session_id=session_id, reason=reason, duration_seconds=0, error=error),
        )

    async def _receive_audio(self, pcm: bytes) -> None:
        assert self._audio_in is not None
        if not pcm:
            return
        if len(pcm) % 2:
            await self._fail(
                CloseCode.INVALID_AUDIO,
                WsErrorCode.INVALID_AUDIO,
                f"Audio frames must be whole 16-bit samples; got {len(pcm)} bytes (odd).",
            )
            return
        if len(pcm) > self._max_frame_bytes:
            await self._fail(
                CloseCode.FRAME_TOO_LARGE,
                WsErrorCode.FRAME_TOO_LARGE,
                f"Audio frames may hold at most {self.limits.max_frame_seconds:g} s "
                f"({self._max_frame_bytes} bytes at {self.sample_rate} Hz); got {len(pcm)} bytes.",
            )
            return
        self._client_seconds += len(pcm) / 2 / self.sample_rate
        ahead = self._client_seconds - (time.monotonic() - self._clock_origin)
        if ahead > self.limits.max_ahead_seconds:
            await self._fail(
                CloseCode.AUDIO_TOO_FAST,
                WsErrorCode.AUDIO_TOO_FAST,
                f"Audio is arriving faster than real time ({ahead:.1f} s ahead; at most "
                f"{self.limits.max_ahead_seconds:g} s allowed). Send it at the pace it plays.",
            )
            return
        self._audio_in.push(pcm)

    async def _receive_control(self, text: str) -> None:
        if _text_too_long(text):
            await self._fail(CloseCode.FRAME_TOO_LARGE, WsErrorCode.FRAME_TOO_LARGE, _TEXT_TOO_LONG)
            return
        try:
            message = jsonsafe.loads(text)
        except jsonsafe.UnsafeJson as error:
            await self.send_error(WsErrorCode.PROTOCOL_ERROR, f"{_NOT_AN_OBJECT} {error}", fatal=False)
            return
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "end":
            self._phase = _Phase.ENDING
            assert self._conversation is not None
            self._spawn(self._conversation.end(contracts.EndReason.COMPLETED))
        elif kind == "config":
            await self.send_error(WsErrorCode.PROTOCOL_ERROR, "The session is already configured.", fatal=False)
        elif not isinstance(message, dict):
            await self.send_error(WsErrorCode.PROTOCOL_ERROR, _NOT_AN_OBJECT, fatal=False)
        else:
            await self.send_error(
                WsErrorCode.PROTOCOL_ERROR, f"Unknown message type {repr(kind)[:80]}. Accepted: end.", fatal=False
            )

    async def _fail(self, close: CloseCode, code: str, message: str) -> None:
        """A fatal client error during the session: say why, then end the session as failed."""
        if self._phase is not _Phase.RUNNING:
            return
        self._phase = _Phase.ENDING
        self._close_code = close
        await self.send_error(code, message, fatal=True)
        assert self._conversation is not None
        self._spawn(self._conversation.end(contracts.EndReason.ERROR, error=message))

    async def _tick(self) -> None:
        """Every tick: fill a slow client's gaps with silence, report dropped audio and usage."""
        assert self._audio_in is not None
        while True:
            due = time.monotonic() + _TICK_SECONDS
            await asyncio.sleep(_TICK_SECONDS)
            now = time.monotonic()
            # Woken late, this process was busy: the caller's frames may be waiting unread, so a
            # gap now is our lag, not theirs; the next tick decides once they are read.
            stalled = now - due > _TICK_SECONDS / 2
            behind = (now - self._fill_origin) - (self._client_seconds + self._filled_seconds)
            if self._phase is _Phase.RUNNING and not stalled and behind > self.limits.underrun_fill_seconds:
                # A phone line never goes quiet: without audio the STT cannot hear the end of
                # an utterance, so a stalled client is heard as silence, as a LiveKit caller is.
                samples = math.floor(behind * self.sample_rate)
                self._audio_in.push(b"\x00\x00" * samples)
                self._filled_seconds += samples / self.sample_rate
                if not self._underrun_reported:
                    self._underrun_reported = True
                    await self.send_error(
                        WsErrorCode.AUDIO_UNDERRUN,
                        f"No audio for {behind:.1f} s: the gap was filled with silence. Send audio in real time.",
                        fatal=False,
                    )
            dropped = self._audio_in.dropped_seconds
            if dropped - self._dropped_reported >= 0.5:
                self._dropped_reported = dropped
                await self.send_error(
                    WsErrorCode.AUDIO_DROPPED,
                    f"The pipeline fell behind; {dropped:.1f} s of your audio was dropped so far.",
                    fatal=False,
                )
            if now - self._usage_flushed_at >= self.limits.usage_report_seconds:
                await self._flush_usage()
            if now - self._row_checked_at >= self.limits.session_check_seconds:
                self._row_checked_at = now
                await self._stop_if_ended_elsewhere()

    async def _stop_if_ended_elsewhere(self) -> None:
        """The backstop to the control group: a row ended by DELETE, billing or a key revocation
        ends the call with the row's reason even when the control message never arrived."""
        try:
            reason = await database_sync_to_async(selectors.voice_session_stop_reason)(session_id=self.session_id)
        except Exception:
            # A database blip must not end a call; the next check tries again.
            logger.warning("Legacy WS session %s: could not read its row", self.session_id, exc_info=True)
            return
        if reason is not None and self._phase is _Phase.RUNNING and self._conversation is not None:
            logger.warning("Legacy WS session %s was ended elsewhere (%s); ending the call", self.session_id, reason)
            self._spawn(self._conversation.end(reason))

    # ------------------------------------------------------------------ conversation events

    async def on_transcript(self, event: TranscriptEvent) -> None:
        segment = event.segment(self.session_id)
        await self.send_event(
            {
                "type": "transcript",
                "role": event.role,
                "text": event.text,
                "final": event.final,
                "language": event.language,
                "start_ms": segment.start_offset_ms,
                "end_ms": segment.end_offset_ms,
            }
        )
        if event.final and event.text.strip():
            await apply_event(tasks.transcript_segment, segment)

    async def on_agent_state(self, state: str) -> None:
        speaking = state == "speaking"
        if speaking != self._agent_speaking:
            self._agent_speaking = speaking
            await self.send_event({"type": "agent.speaking" if speaking else "agent.stopped"})

    async def on_usage(self, items: list[contracts.UsageItem]) -> None:
        for item in items:
            key = (str(item.component), item.model, item.provider)
            self._usage_pending[key] = self._usage_pending.get(key, 0.0) + item.quantity
            self._usage_totals[key] = self._usage_totals.get(key, 0.0) + item.quantity
        await self.send_event(
            {
                "type": "usage",
                "items": [_usage_json(i.component, i.model, i.provider, i.quantity) for i in items],
                "totals": [_usage_json(c, m, p, q) for (c, m, p), q in sorted(self._usage_totals.items())],
            }
        )

    async def _flush_usage(self) -> None:
        """Apply the usage gathered since the last flush: billing sees it within seconds, mid-call."""
        async with self._usage_lock:
            self._usage_flushed_at = time.monotonic()
            if not self._usage_pending:
                return
            pending, self._usage_pending = self._usage_pending, {}
            items = [
                contracts.UsageItem(component=contracts.UsageComponent(c), model=m, provider=p, quantity=round(q, 6))
                for (c, m, p), q in pending.items()
            ]
            await apply_event(tasks.usage_reported, contracts.UsageReported(session_id=self.session_id, items=items))

    async def on_ended(self, ended: ConversationEnded) -> None:
        try:
            if self._ticker is not None:
                self._ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._ticker
            await self._flush_usage()
            await apply_event(
                tasks.session_ended,
                contracts.SessionEnded(
                    session_id=self.session_id,
                    reason=ended.reason,
                    duration_seconds=max(0.0, ended.duration_seconds),
                    turn_latencies=ended.turn_latencies,
                    error=ended.error,
                ),
            )
            close = self._close_code or _END_CLOSE.get(ended.reason, CloseCode.NORMAL)
            if close is not CloseCode.NORMAL and not self._fatal_error_sent:
                await self.send_error(
                    _END_ERROR.get(ended.reason, str(ErrorCode.INTERNAL_ERROR)),
                    ended.error or f"The session ended: {ended.reason}.",
                    fatal=True,
                )
            await self._send_session_ended(ended.reason, duration_seconds=ended.duration_seconds, error=ended.error)
            await self._close_socket(close)
        finally:
            await self._release()

    async def _release(self) -> None:
        self._phase = _Phase.CLOSED
        if self._audio_in is not None:
            self._audio_in.close()
        if self._audio_out is not None:
            await self._audio_out.aclose()
        if self._group and self.channel_layer is not None:
            with contextlib.suppress(Exception):
                await self.channel_layer.group_discard(self._group, self.channel_name)
        self._finished.set()

    # ------------------------------------------------------------------ sending

    async def send_event(self, event: dict[str, Any]) -> None:
        if self._socket_open:
            await self._send(text_data=json.dumps(event, ensure_ascii=False))

    async def _send(self, **message: Any) -> None:
        try:
            await self.send(**message)
        except Disconnected:
            # Daphne's WebSocket layer closed the connection (the client left, or sent a message
            # over its size limit) and the disconnect message is still on its way to us.
            self._socket_open = False

    async def _send_session_ended(self, reason: contracts.EndReason, *, duration_seconds: float, error: str) -> None:
        await self.send_event(
            {
                "type": "session.ended",
                "session_id": self.session_id,
                "reason": str(reason),
                "duration_seconds": duration_seconds,
                "error": error,
            }
        )

    async def send_error(
        self,
        code: str,
        message: str,
        *,
        fatal: bool,
        fields: dict[str, Any] | None = None,
        retry_after: int | None = None,
    ) -> None:
        event: dict[str, Any] = {"type": "error", "code": str(code), "message": message, "fatal": fatal}
        self._fatal_error_sent = self._fatal_error_sent or fatal
        if fields:
            event["fields"] = fields
        if retry_after is not None:
            event["retry_after"] = retry_after
        await self.send_event(event)

    async def _send_audio(self, pcm: bytes) -> None:
        if self._socket_open:
            await self._send(bytes_data=pcm)

    async def _close_socket(self, code: CloseCode) -> None:
        if self._socket_open:
            self._socket_open = False
            await self.close(code=int(code))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


_TEXT_TOO_LONG = f"Text messages may be at most {MAX_TEXT_MESSAGE_BYTES // 1024} KiB; audio goes in binary messages."


def _text_too_long(text: str) -> bool:
    return len(text) > MAX_TEXT_MESSAGE_BYTES or len(text.encode("utf-8")) > MAX_TEXT_MESSAGE_BYTES


_NOT_AN_OBJECT = "Text messages must be JSON objects; audio goes in binary messages."


def _usage_json(component: str, model: str, provider: str, quantity: float) -> dict[str, Any]:
    return {"component": str(component), "model": model, "provider": provider, "quantity": round(quantity, 6)}
