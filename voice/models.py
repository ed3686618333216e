from __future__ import annotations

import uuid
from datetime import datetime

from django.db import models

from accounts.models import ApiKey, Organization
from agent_worker import contracts

TRANSPORT_CHOICES = [(t.value, t.value) for t in contracts.Transport]
END_REASON_CHOICES = [(r.value, r.value) for r in contracts.EndReason]


class VoiceSessionQuerySet(models.QuerySet["VoiceSession"]):
    def live(self) -> VoiceSessionQuerySet:
        """Sessions that count against caps: created (waiting for the caller) or active."""
        return self.filter(status__in=(VoiceSession.Status.CREATED, VoiceSession.Status.ACTIVE))

    def holding_capacity(self, *, now: datetime) -> VoiceSessionQuerySet:
        """Live sessions that really hold a provider stream: a ``created`` one past its join
        deadline is as good as ended (the next expiry closes it), so it blocks no one."""
        return self.filter(holding_capacity_condition(now=now))


def holding_capacity_condition(*, now: datetime | models.Expression) -> models.Q:
    """The condition of ``holding_capacity``, for counts that filter an aggregate on it (``now``
    may be an expression: a statement compiled once takes each call's time as a parameter)."""
    return models.Q(status=VoiceSession.Status.ACTIVE) | models.Q(
        status=VoiceSession.Status.CREATED, join_deadline__gte=now
    )


class VoiceSession(models.Model):
    class Status(models.TextChoices):
        CREATED = "created"
        ACTIVE = "active"
        ENDED = "ended"
        FAILED = "failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="voice_sessions")
    api_key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    transport = models.CharField(max_length=16, choices=TRANSPORT_CHOICES, default=contracts.Transport.LIVEKIT)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.CREATED, db_index=True)
    end_reason = models.CharField(max_length=32, choices=END_REASON_CHOICES, blank=True)
    error_message = models.TextField(blank=True)

    # The validated session config (the REST body), exactly as the pipeline receives it.
    system_prompt = models.TextField()
    voice = models.CharField(max_length=32)
    language = models.CharField(max_length=16)
    llm_model = models.CharField(max_length=contracts.MAX_LLM_MODEL_CHARS)
    tts_provider = models.CharField(max_length=32)
    max_duration_seconds = models.PositiveIntegerField()
    tools = models.JSONField(default=list, blank=True)  # contracts.ToolSpec dicts
    metadata = models.JSONField(default=dict, blank=True)
    # contracts.BackchannelSettings as JSON; {} means its defaults.
    backchannels = models.JSONField(default=dict, blank=True)

    room_name = models.CharField(max_length=100, unique=True)
    providers = models.CharField(max_length=100, blank=True, help_text="Which providers ran it, e.g. 'offline'.")
    # NULL, not "", for "no key": the unique constraint must ignore sessions created without one.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)  # noqa: DJ001
    request_fingerprint = models.CharField(max_length=64, blank=True)
    # Stripe's semantics: a replay of the key answers these exact bytes (the first 201, token
    # included), never a new credential. Cleared by a sweep once it can no longer be replayed.
    idempotency_response = models.TextField(blank=True)
    idempotency_key_used_at = models.DateTimeField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    join_deadline = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    duration_seconds = models.FloatField(null=True, blank=True)
    turn_latencies = models.JSONField(default=list, blank=True)
    content_deleted_at = models.DateTimeField(null=True, blank=True)
    # Set while the LiveKit room still has to be deleted (when that was last queued); cleared
    # once LiveKit confirms it gone. The reaper re-queues stale ones, so a LiveKit outage or a
    # lost task never leaves a room of an ended session running.
    room_delete_queued_at = models.DateTimeField(null=True, blank=True)

    objects = VoiceSessionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization", "idempotency_key"],
                condition=models.Q(idempotency_key__isnull=False),
                name="uniq_session_idempotency_key",
            )
        ]
        indexes = [
            # The list's filters: status and created_at have their own indexes (db_index above); the
            # others in the list's order (newest first) within the organization.
            models.Index(fields=["organization", "-created_at", "-id"], name="session_org_created"),
            models.Index(fields=["organization", "transport", "-created_at", "-id"], name="session_org_transport"),
            # metadata.KEY=VALUE filters are containment (@>) on PostgreSQL, served by the GIN index
            # "session_metadata" that migration 0004 creates there only (SQLite has no GIN).
            models.Index(
                fields=["room_delete_queued_at"],
                condition=models.Q(room_delete_queued_at__isnull=False),
                name="session_room_delete_pending",
            ),
            # Only rows still holding a stored response (a token): keeps the sweep cheap.
            models.Index(
                fields=["idempotency_key_used_at"],
                condition=~models.Q(idempotency_response=""),
                name="session_idem_response",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"

    @property
    def is_live(self) -> bool:
        return self.status in (self.Status.CREATED, self.Status.ACTIVE)

    def config(self) -> contracts.SessionConfig:
        return contracts.SessionConfig(
            system_prompt=self.system_prompt,
            voice=self.voice,
            language=self.language,
            llm_model=self.llm_model,
            tts_provider=self.tts_provider,
            max_duration_seconds=self.max_duration_seconds,
            backchannels=contracts.BackchannelSettings.model_validate(self.backchannels or {}),
            tools=[contracts.ToolSpec.model_validate(tool) for tool in self.tools],
        )


class TranscriptSegment(models.Model):
    """One final utterance. ``event_id`` makes a redelivered segment a no-op."""

    class Role(models.TextChoices):
        USER = "user"
        AGENT = "agent"
        TOOL = "tool"  # a tool call the agent made; text is the tool's name

    session = models.ForeignKey(VoiceSession, on_delete=models.CASCADE, related_name="transcript_segments")
    event_id = models.CharField(max_length=64, unique=True)
    role = models.CharField(max_length=8, choices=Role.choices)
    text = models.TextField()
    language = models.CharField(max_length=16, blank=True)
    start_offset_ms = models.PositiveIntegerField()
    end_offset_ms = models.PositiveIntegerField()
    # Role "tool": contracts.ToolCallRecord (name, call id, arguments, result excerpt, error, latency).
    tool_call = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["start_offset_ms", "end_offset_ms", "id"]
        indexes = [models.Index(fields=["session", "start_offset_ms"], name="segment_session_offset")]

    def __str__(self) -> str:
        return f"{self.role}@{self.start_offset_ms}ms: {self.text[:40]}"


class ProcessedEvent(models.Model):
    """Worker events already applied (session started/ended): a replay changes nothing."""

    event_id = models.CharField(max_length=64, primary_key=True)
    kind = models.CharField(max_length=64)
    session = models.ForeignKey(VoiceSession, null=True, on_delete=models.SET_NULL, related_name="+")
    processed_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.kind} {self.event_id}"
