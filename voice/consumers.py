"""The legacy PCM WebSocket ``/ws/voice-agent?key=cm_…``: one voice session per socket.

The protocol (messages, close codes, limits) is written down in docs/legacy-websocket.md; its
constants and the config reader are ``voice.legacy.protocol``, its limits ``voice.legacy.limits``.
The socket runs the very same ``Conversation`` as the LiveKit worker, in this process: caller PCM
goes straight from ``receive`` into a ``QueueAudioInput`` and the agent's PCM straight from a
``CallbackAudioOutput`` to ``send`` — never through the channel layer. The session row is an
ordinary one (transport ``websocket``): it is admitted by ``voice_session_create``, and the
conversation's writes (start, transcript lines, usage, end) go through the same voice services
the worker's Celery tasks call. The caller's audio is paced by ``CallerAudioClock`` and its usage
gathered by ``UsageBuffer``; this module is the adapter between the socket and those parts.

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
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from autobahn.exception import Disconnected
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import InterfaceError, OperationalError

from accounts.ws_auth import SCOPE_KEY, WsKeyAuth
from agent_worker import contracts, drain, logs
from agent_worker.audio_io import CallbackAudioOutput, QueueAudioInput
from agent_worker.conversation import Conversation, ConversationEnded, ConversationObserver, TranscriptEvent

# The provider clients are imported with the routing, at server start: imported lazily by the
# first caller's session they would stall every live socket on this event loop for seconds.
from agent_worker.providers import llm as _llm_clients  # noqa: F401
from agent_worker.providers import sarvam_stt as _stt_client  # noqa: F401
from agent_worker.providers import sarvam_tts as _tts_client  # noqa: F401
from agent_worker.tools import tool_options
from callmissed import jsonsafe
from callmissed.errors import ApplicationError, ErrorCode
from voice import lifecycle, selectors, services
from voice.legacy.audio_clock import CallerAudioClock
from voice.legacy.limits import LegacyWsLimits
from voice.legacy.protocol import (
    ADMISSION_CLOSE,
    AUTH_CLOSE,
    DEFAULT_SAMPLE_RATE,
    END_CLOSE,
    END_ERROR,
    NOT_AN_OBJECT,
    PIPELINE_RATE,
    TEXT_TOO_LONG,
    CloseCode,
    WsErrorCode,
    config_invalid,
    parse_config,
    text_too_long,
    unsafe_config_fields,
)
from voice.legacy.usage_buffer import UsageBuffer
from voice.ws_control import group_join, session_group

logger = logging.getLogger(__name__)

_TICK_SECONDS = 0.1
# Joining the session's control group is retried after these pauses before the call is refused.
_CONTROL_JOIN_RETRY_SECONDS = (0.25, 0.5)
CONTROL_UNAVAILABLE_RETRY_AFTER_SECONDS = 5
_RETRYABLE_DB_ERRORS = (OperationalError, InterfaceError)
_DB_ATTEMPTS = 3


async def _record(write: Callable[[], object], event: contracts.WorkerEvent) -> None:
    """Apply one of the call's writes now: ``write`` hands ``event`` to its voice service.

    A database blip is retried here at once; what still fails (a missing price, a database that
    stays away) is queued for the Celery task of the event, whose own retries apply it later. The
    services apply each event id once, so neither path doubles it."""
    for attempt in range(1, _DB_ATTEMPTS + 1):
        try:
            await database_sync_to_async(write)()
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
        await database_sync_to_async(lifecycle.worker_event_queue)(event=event)
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
        self.limits = LegacyWsLimits.from_settings()
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
        # The caller's audio clock, made when the config arrives; the usage buffer, with the session.
        self._clock: CallerAudioClock | None = None
        self._usage: UsageBuffer | None = None
        self._usage_write: asyncio.Task[None] | None = None
        self._max_frame_bytes = 0
        self._agent_speaking = False
        self._fatal_error_sent = False

    # ------------------------------------------------------------------ Channels plumbing

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """``AsyncConsumer.__call__`` with a leaner loop. Channels waits on the client and the
        channel layer together with a new task and an ``asyncio.wait`` for every message; at 50
        audio frames a second per socket that bookkeeping costs more than the frames. Here the
        client's messages are read in a plain loop, and the channel layer — control messages
        only, a few per session — by a task beside it.

        It replaces the stock loop only as long as it pays: ``bench.ws_sessions`` measures both
        in one run (the stock loop served by the bench-only ``bench.ws_echo``), and
        ``voice/tests/test_consumer_loop.py`` fails when Channels' own ``__call__`` changes, so
        an upgrade re-reads this against it."""
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
            await self._refuse(AUTH_CLOSE.get(code, CloseCode.KEY_INVALID), str(code), message)
            return
        if drain.LIVE.draining:
            await self._refuse(
                CloseCode.SERVICE_UNAVAILABLE,
                str(ErrorCode.SERVICE_UNAVAILABLE),
                "This server is shutting down and takes no new calls: connect again.",
                retry_after=1,
            )
            return
        logs.bind(organization_id=str(auth.api_key.organization_id) if auth.api_key else None)
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
        received_at = time.monotonic()
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
        if text_too_long(text_data):
            await self._refuse(CloseCode.FRAME_TOO_LARGE, WsErrorCode.FRAME_TOO_LARGE, TEXT_TOO_LONG)
            return
        try:
            message = jsonsafe.loads(text_data)
        except jsonsafe.UnsafeJson as error:
            fields = unsafe_config_fields(text_data)
            if fields:
                await self._refuse_admission(config_invalid(fields))
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
        auth: WsKeyAuth = self.scope[SCOPE_KEY]
        assert auth.organization is not None
        try:
            config, rate = parse_config(message)
            created = await database_sync_to_async(services.voice_session_create)(
                organization=auth.organization,
                api_key=auth.api_key,
                config=config,
                transport=contracts.Transport.WEBSOCKET,
            )
        except ApplicationError as error:
            await self._refuse_admission(error)
            return
        if self._config_timer is not None:
            self._config_timer.cancel()
        if not self._socket_open:
            # The client left while the row was being created.
            await self._end_row_that_never_ran(str(created.session.id), contracts.EndReason.USER_LEFT)
            self._phase = _Phase.CLOSED
            return
        self._clock = CallerAudioClock(
            sample_rate=rate,
            received_at=received_at,
            max_ahead_seconds=self.limits.max_ahead_seconds,
            underrun_fill_seconds=self.limits.underrun_fill_seconds,
            tick_seconds=_TICK_SECONDS,
        )
        await self._start_session(
            str(created.session.id),
            created.session.config(),
            rate,
            organization_id=str(created.session.organization_id),
        )

    async def _refuse_admission(self, error: ApplicationError) -> None:
        """A config the service layer refused (invalid, or not admitted): its error, its close code."""
        close = ADMISSION_CLOSE.get(error.code, CloseCode.PROTOCOL_ERROR)
        await self._refuse(close, str(error.code), error.message, error.fields or None, error.retry_after)

    # ------------------------------------------------------------------ the session

    async def _start_session(
        self, session_id: str, config: contracts.SessionConfig, rate: int, *, organization_id: str
    ) -> None:
        self.session_id = session_id
        logs.bind(session_id=session_id)
        if not await self._join_control_group():
            await self._refuse_uncontrollable()
            return
        self.sample_rate = rate
        self._max_frame_bytes = self.limits.max_frame_bytes(rate)
        self._usage = UsageBuffer(session_id=session_id, report_seconds=self.limits.usage_report_seconds)
        self._audio_in = QueueAudioInput(sample_rate=rate, max_buffered_seconds=self.limits.input_buffer_seconds)
        self._audio_out = CallbackAudioOutput(sample_rate=rate, on_audio=self._send_audio)
        conversation = Conversation(
            session_id=session_id,
            config=config,
            providers=settings.PROVIDERS,
            observer=_SocketObserver(self),
            sample_rate=PIPELINE_RATE[rate],
            idle_timeout_seconds=settings.AGENT_IDLE_TIMEOUT_SECONDS,
            goodbye_lead_seconds=settings.AGENT_GOODBYE_LEAD_SECONDS,
            tool_options=tool_options(
                signing_key=settings.TOOL_SIGNING_KEY,
                organization_id=organization_id,
                allowed_networks=settings.OUTBOUND_ALLOWED_NETWORKS,
                filler_delay_seconds=settings.TOOL_FILLER_DELAY_SECONDS,
            ),
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
        if self._clock is not None:
            self._clock.listening()
        self._ticker = asyncio.get_running_loop().create_task(self._tick(), name=f"legacy-ws-tick-{session_id}")
        started = contracts.SessionStarted(session_id=session_id, providers=conversation.providers_label)
        await _record(lambda: lifecycle.voice_session_started_apply(event=started), started)

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
        ended = contracts.SessionEnded(session_id=session_id, reason=reason, duration_seconds=0, error=error)
        await _record(lambda: lifecycle.voice_session_ended_apply(event=ended), ended)

    async def _receive_audio(self, pcm: bytes) -> None:
        assert self._audio_in is not None and self._clock is not None
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
        ahead = self._clock.receive(len(pcm))
        if ahead is not None:
            await self._fail(
                CloseCode.AUDIO_TOO_FAST,
                WsErrorCode.AUDIO_TOO_FAST,
                f"Audio is arriving faster than real time ({ahead:.1f} s ahead; at most "
                f"{self.limits.max_ahead_seconds:g} s allowed). Send it at the pace it plays.",
            )
            return
        self._audio_in.push(pcm)

    async def _receive_control(self, text: str) -> None:
        if text_too_long(text):
            await self._fail(CloseCode.FRAME_TOO_LARGE, WsErrorCode.FRAME_TOO_LARGE, TEXT_TOO_LONG)
            return
        try:
            message = jsonsafe.loads(text)
        except jsonsafe.UnsafeJson as error:
            await self.send_error(WsErrorCode.PROTOCOL_ERROR, f"{NOT_AN_OBJECT} {error}", fatal=False)
            return
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "end":
            self._phase = _Phase.ENDING
            assert self._conversation is not None
            self._spawn(self._conversation.end(contracts.EndReason.COMPLETED))
        elif kind == "config":
            await self.send_error(WsErrorCode.PROTOCOL_ERROR, "The session is already configured.", fatal=False)
        elif not isinstance(message, dict):
            await self.send_error(WsErrorCode.PROTOCOL_ERROR, NOT_AN_OBJECT, fatal=False)
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
        """Every tick: fill a slow client's gaps with silence, report dropped audio, write usage,
        and now and then read the session's row."""
        assert self._audio_in is not None and self._clock is not None and self._usage is not None
        row_checked_at = self._clock.now()
        while True:
            due = self._clock.now() + _TICK_SECONDS
            await asyncio.sleep(_TICK_SECONDS)
            fill = self._clock.tick(due=due) if self._phase is _Phase.RUNNING else None
            if fill is not None:
                # A phone line never goes quiet: without audio the STT cannot hear the end of
                # an utterance, so a stalled client is heard as silence, as a LiveKit caller is.
                self._audio_in.push(fill.pcm)
                if fill.first:
                    await self.send_error(
                        WsErrorCode.AUDIO_UNDERRUN,
                        f"No audio for {fill.behind_seconds:.1f} s: the gap was filled with silence. "
                        "Send audio in real time.",
                        fatal=False,
                    )
            dropped = self._clock.dropped_to_report(self._audio_in.dropped_seconds)
            if dropped is not None:
                await self.send_error(
                    WsErrorCode.AUDIO_DROPPED,
                    f"The pipeline fell behind; {dropped:.1f} s of your audio was dropped so far.",
                    fatal=False,
                )
            if self._usage.due():
                await self._flush_usage()
            if self._clock.now() - row_checked_at >= self.limits.session_check_seconds:
                row_checked_at = self._clock.now()
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
                **({"tool_call": event.tool_call.model_dump(mode="json")} if event.tool_call else {}),
            }
        )
        if event.final and event.text.strip():
            await _record(lambda: lifecycle.transcript_segment_add(segment=segment), segment)

    async def on_agent_state(self, state: str) -> None:
        speaking = state == "speaking"
        if speaking != self._agent_speaking:
            self._agent_speaking = speaking
            await self.send_event({"type": "agent.speaking" if speaking else "agent.stopped"})

    async def on_usage(self, items: list[contracts.UsageItem]) -> None:
        assert self._usage is not None
        self._usage.add(items)
        await self.send_event(
            {
                "type": "usage",
                "items": [_usage_json(item) for item in items],
                "totals": [_usage_json(item) for item in self._usage.totals()],
            }
        )

    async def _flush_usage(self) -> None:
        """Write the usage gathered since the last flush: billing sees it within seconds, mid-call.
        The write outlives a cancelled tick: the end's flush waits for it, so none is lost."""
        assert self._usage is not None
        if self._usage_write is not None:
            await asyncio.shield(self._usage_write)
        usage = self._usage.take()
        if usage is None:
            return
        self._usage_write = asyncio.get_running_loop().create_task(
            _record(lambda: lifecycle.usage_add(usage=usage), usage)
        )
        await asyncio.shield(self._usage_write)

    async def on_ended(self, ended: ConversationEnded) -> None:
        try:
            if self._ticker is not None:
                self._ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._ticker
            if self._usage is not None:
                await self._flush_usage()
            event = ended.event(self.session_id)
            await _record(lambda: lifecycle.voice_session_ended_apply(event=event), event)
            # Ended by this server's shutdown (agent_worker/drain.py): the caller may call again at once.
            shutdown = ended.error == drain.SHUTDOWN_MESSAGE
            close = self._close_code or (
                CloseCode.SERVICE_UNAVAILABLE if shutdown else END_CLOSE.get(ended.reason, CloseCode.NORMAL)
            )
            if close is not CloseCode.NORMAL and not self._fatal_error_sent:
                await self.send_error(
                    str(ErrorCode.SERVICE_UNAVAILABLE)
                    if shutdown
                    else END_ERROR.get(ended.reason, str(ErrorCode.INTERNAL_ERROR)),
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


def _usage_json(item: contracts.UsageItem) -> dict[str, Any]:
    return {
        "component": str(item.component),
        "model": item.model,
        "provider": item.provider,
        "quantity": round(item.quantity, 6),
    }
