"""The LiveKit agent worker: one explicit-dispatch ``rtc_session`` per voice session.

Start it with ``python -m agent_worker start`` (or ``python -m agent_worker.worker start``;
``dev`` for hot reload). It registers with the LiveKit server as ``LIVEKIT_AGENT_NAME``; each
job carries a ``contracts.DispatchMetadata`` (session id and config) sealed into the caller's
token by Django (agent_worker/sealing.py). The job runs the ``Conversation`` in the room,
reports what happens to Django through Celery, and reports the end — user left, room deleted
(REST DELETE), idle, error, or ``max_duration_seconds`` (with a spoken goodbye just before);
the platform then deletes the room. SIGTERM drains:
the worker stops taking jobs, lets live conversations go on for ``DRAIN_WAIT_SECONDS``, then
ends the rest with a spoken goodbye (agent_worker/drain.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from livekit import rtc
from livekit.agents import AgentServer, JobContext, JobProcess, cli
from livekit.agents.voice import io
from pydantic import ValidationError

from agent_worker import contracts, drain, heap, logs, sealing
from agent_worker.conversation import Conversation, ConversationEnded, ConversationObserver, TranscriptEvent
from agent_worker.provider_settings import ProviderSettings
from agent_worker.reporting import EventReporter, Reporter
from agent_worker.settings import WorkerSettings, worker_settings
from agent_worker.tools import tool_options

logger = logging.getLogger("agent_worker")


@dataclass(frozen=True)
class SessionIO:
    """Audio and text IO to run the conversation over instead of the room (tests, benchmarks)."""

    audio_input: io.AudioInput | None = None
    audio_output: io.AudioOutput | None = None
    text_output: io.TextOutput | None = None


class ReportingObserver(ConversationObserver):
    """Turns the conversation's events into the worker → Django events."""

    def __init__(self, *, session_id: str, reporter: Reporter) -> None:
        self.session_id = session_id
        self.reporter = reporter

    async def on_transcript(self, event: TranscriptEvent) -> None:
        if not event.final or not event.text.strip():
            return  # interim text reaches the browser through the room; Django stores final lines
        self.reporter.report(event.segment(self.session_id))

    async def on_usage(self, items: list[contracts.UsageItem]) -> None:
        if items:
            self.reporter.report(contracts.UsageReported(session_id=self.session_id, items=items))

    async def on_error(self, message: str, *, recoverable: bool) -> None:
        log = logger.warning if recoverable else logger.error
        log("Session %s: %s", self.session_id, message)

    async def on_ended(self, ended: ConversationEnded) -> None:
        self.reporter.report(ended.event(self.session_id))


def parse_dispatch(metadata: str, *, secret: str) -> contracts.DispatchMetadata:
    """The job metadata Django sealed into the token; raises ValueError with a readable reason."""
    try:
        return contracts.DispatchMetadata.model_validate_json(sealing.unseal(metadata, secret=secret))
    except ValidationError as error:
        fields = ", ".join(".".join(map(str, e["loc"])) or "metadata" for e in error.errors())
        raise ValueError(f"job metadata is not a CallMissed dispatch ({fields})") from None


def _is_caller(participant: Any) -> bool:
    return getattr(participant, "kind", rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD) == (
        rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD
    )


def watch_room(room: rtc.Room, conversation: Conversation) -> Callable[[], None]:
    """End the conversation when the caller leaves or the room goes away; returns an unsubscribe."""
    tasks: set[asyncio.Task[None]] = set()

    def end(reason: contracts.EndReason, error: str = "") -> None:
        task = asyncio.get_running_loop().create_task(conversation.end(reason, error=error))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def on_participant_disconnected(participant: Any) -> None:
        if not _is_caller(participant):
            return
        if not any(_is_caller(p) for p in room.remote_participants.values()):
            end(contracts.EndReason.USER_LEFT)

    def on_disconnected(reason: Any) -> None:
        if reason == rtc.DisconnectReason.ROOM_DELETED:
            end(contracts.EndReason.DELETED)
        elif reason != rtc.DisconnectReason.CLIENT_INITIATED:
            name = rtc.DisconnectReason.Name(reason) if reason in rtc.DisconnectReason.values() else str(reason)
            end(contracts.EndReason.ERROR, f"The agent lost its LiveKit connection ({name}).")

    room.on("participant_disconnected", on_participant_disconnected)
    room.on("disconnected", on_disconnected)

    def unwatch() -> None:
        room.off("participant_disconnected", on_participant_disconnected)
        room.off("disconnected", on_disconnected)

    return unwatch


async def run_job(
    ctx: JobContext,
    *,
    settings: WorkerSettings,
    providers: ProviderSettings,
    reporter: Reporter,
    session_io: SessionIO | None = None,
) -> ConversationEnded | None:
    """Run one dispatched session to its end. ``session_io`` replaces the room's audio (tests)."""
    room_name = ctx.job.room.name or ctx.room.name
    try:
        dispatch = parse_dispatch(ctx.job.metadata, secret=settings.livekit_api_secret)
    except ValueError as error:
        # Without a session id there is nobody to report to; the room is not one of ours.
        logger.error("Rejected job %s in room %s: %s", ctx.job.id, room_name, error)
        return None

    session_id = dispatch.session_id
    logs.bind(session_id=session_id, organization_id=dispatch.organization_id)
    conversation = Conversation(
        session_id=session_id,
        config=dispatch.config,
        providers=providers,
        observer=ReportingObserver(session_id=session_id, reporter=reporter),
        idle_timeout_seconds=settings.agent_idle_timeout_seconds,
        goodbye_lead_seconds=settings.agent_goodbye_lead_seconds,
        tool_options=tool_options(
            signing_key=settings.tool_signing_key,
            organization_id=dispatch.organization_id,
            allowed_networks=settings.outbound_allowed_networks,
            filler_delay_seconds=settings.tool_filler_delay_seconds,
        ),
    )

    async def on_shutdown(reason: str) -> None:
        # The worker's drain wait is over (or it is exiting): a call still live ends with a
        # goodbye, and is closed and reported. After a normal end this is a no-op.
        await drain.end_with_goodbye([conversation])

    ctx.add_shutdown_callback(on_shutdown)
    await ctx.connect()
    unwatch = watch_room(ctx.room, conversation)
    try:
        try:
            if session_io is None:
                await asyncio.wait_for(ctx.wait_for_participant(), timeout=settings.session_join_timeout_seconds)
                await conversation.start(room=ctx.room)
            else:
                await conversation.start(
                    audio_input=session_io.audio_input,
                    audio_output=session_io.audio_output,
                    text_output=session_io.text_output,
                )
        except TimeoutError:
            await conversation.end(contracts.EndReason.UNJOINED, error="Nobody joined the room.")
        except Exception as error:
            logger.exception("Session %s could not start", session_id)
            await conversation.end(contracts.EndReason.ERROR, error=f"The agent could not start: {error}")
        else:
            # A conversation that could not run (providers refused the config) ended inside start().
            if conversation.ended is None:
                reporter.report(
                    contracts.SessionStarted(
                        session_id=session_id, providers=conversation.providers_label, room_name=room_name
                    )
                )
        ended = await conversation.wait_ended()
    finally:
        unwatch()
    # The platform deletes the room when it records the end (voice.delete_room): one path for every end.
    logger.info("Session %s ended: %s after %.1f s", session_id, ended.reason, ended.duration_seconds)
    return ended


async def entrypoint(ctx: JobContext) -> None:
    """The job process's entry point. Module-level, because job processes receive it pickled."""
    settings = worker_settings()
    reporter = EventReporter(broker_url=settings.broker_url)
    try:
        await run_job(ctx, settings=settings, providers=settings.providers, reporter=reporter)
    finally:
        await reporter.aclose()
    ctx.shutdown("session ended")


def prepare_job_process(proc: JobProcess) -> None:
    """Run once in each job process before it takes a job (module-level: it is pickled too)."""
    logs.install_on_root_handlers()
    heap.settle_after_startup()


def build_server(settings: WorkerSettings) -> AgentServer:
    server = AgentServer(
        ws_url=settings.livekit_url,
        api_key=settings.livekit_api_key,
        api_secret=settings.livekit_api_secret,
        # SIGTERM: no new jobs; live calls get this long, then each job's shutdown says goodbye.
        drain_timeout=max(1, round(settings.drain_wait_seconds)),  # 0 would mean wait forever
        # The goodbye (bounded by the goodbye lead) and the final report fit in this.
        shutdown_process_timeout=settings.agent_goodbye_lead_seconds + 10.0,
        port=settings.agent_http_port,
        prometheus_port=settings.agent_metrics_port,
        prometheus_multiproc_dir=settings.metrics_dir,
        setup_fnc=prepare_job_process,
    )
    # A named agent is dispatched only to rooms whose token (or a dispatch request) asks for it.
    server.rtc_session(entrypoint, agent_name=settings.livekit_agent_name)
    return server


def main() -> None:
    settings = worker_settings()
    logger.info(
        "Agent worker %r for %s (providers: %s)",
        settings.livekit_agent_name,
        settings.livekit_url,
        settings.providers.redacted(),
    )
    cli.run_app(build_server(settings))


if __name__ == "__main__":
    main()
