"""Reads for voice sessions. Every lookup is scoped to the caller's organization, so another
tenant's session is simply not found."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Count, Q, QuerySet

from accounts.models import Organization
from agent_worker import catalog, contracts, tools
from billing import selectors as billing_selectors
from callmissed import jsonsafe
from callmissed.selectors import get_or_not_found
from voice.models import TranscriptSegment, VoiceSession

# A metadata key a list may filter on (``metadata.KEY=VALUE`` in the API, a key field in the dashboard).
METADATA_KEY_PATTERN = r"[A-Za-z0-9_-]{1,64}"


def _visible(organization: Organization) -> QuerySet[VoiceSession]:
    return VoiceSession.objects.filter(organization=organization, content_deleted_at__isnull=True)


def voice_session_get(*, organization: Organization, session_id: str | uuid.UUID) -> VoiceSession:
    session = get_or_not_found(_visible(organization), session_id, "Voice session not found.")
    session.organization = organization  # the caller's, already loaded: no read per use
    return session


def live_session_count(*, organization: Organization) -> int:
    """Sessions that count against the organization's concurrency limit."""
    return VoiceSession.objects.live().filter(organization=organization).count()


def voice_session_stop_reason(*, session_id: str) -> contracts.EndReason | None:
    """Why a running call must stop: the row's end reason once it is no longer live, or
    ``key_revoked`` once the key it was opened with is revoked (``None`` while neither). One
    primary-key read, for a legacy socket to check its own row now and then."""
    row = VoiceSession.objects.filter(pk=session_id).values_list("status", "end_reason", "api_key__revoked_at").first()
    if row is None:
        return contracts.EndReason.ERROR
    status, end_reason, key_revoked_at = row
    if status in (VoiceSession.Status.CREATED, VoiceSession.Status.ACTIVE):
        # The revocation's own signal ends the call at once; this catches one that raced it.
        return contracts.EndReason.KEY_REVOKED if key_revoked_at is not None else None
    try:
        return contracts.EndReason(end_reason)
    except ValueError:
        return contracts.EndReason.ERROR


def voice_session_list(
    *,
    organization: Organization,
    status: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    transport: str | None = None,
    metadata: dict[str, str] | None = None,
    id_prefix: str | None = None,
) -> QuerySet[VoiceSession]:
    qs = _visible(organization)
    if id_prefix:
        qs = qs.filter(id__startswith=id_prefix.lower())
    if status:
        qs = qs.filter(status=status)
    if transport:
        qs = qs.filter(transport=transport)
    if created_after:
        qs = qs.filter(created_at__gte=created_after)
    if created_before:
        qs = qs.filter(created_at__lt=created_before)
    for key, raw in (metadata or {}).items():
        qs = qs.filter(_metadata_equals(key, raw))
    return qs.order_by("-created_at", "-id")


def _metadata_equals(key: str, raw: str) -> Q:
    """Query strings are text; ``?metadata.plan=2`` should still match ``{"plan": 2}``."""
    condition = _metadata_has(key, raw)
    try:
        # Strict: 1e400 or NaN would reach jsonb as Infinity/NaN, which PostgreSQL refuses.
        typed = jsonsafe.loads(raw)
    except jsonsafe.UnsafeJson:
        return condition
    if typed != raw and (typed is None or isinstance(typed, bool | int | float)):
        condition |= _metadata_has(key, typed)
    return condition


def _metadata_has(key: str, value: str | bool | int | float | None) -> Q:
    # For a scalar, containment is equality of the key's value; on PostgreSQL it is what the
    # GIN index on metadata serves (a key lookup would read every session of the organization).
    # SQLite has no containment lookup.
    if connection.vendor == "postgresql":
        return Q(metadata__contains={key: value})
    return Q(**{f"metadata__{key}": value})


@dataclass(frozen=True)
class SessionLatency:
    """Per-turn latency figures as the worker reported them, with p50/p95 of time to first audio."""

    turns: int
    first_audio_p50_ms: float | None
    first_audio_p95_ms: float | None
    per_turn: list[dict[str, Any]]


def voice_session_latency(*, session: VoiceSession) -> SessionLatency:
    turns = list(session.turn_latencies or [])
    first_audio = sorted(
        float(t["end_of_speech_to_first_audio_ms"])
        for t in turns
        if isinstance(t, dict) and t.get("end_of_speech_to_first_audio_ms") is not None
    )
    return SessionLatency(
        turns=len(turns),
        first_audio_p50_ms=_percentile(first_audio, 50),
        first_audio_p95_ms=_percentile(first_audio, 95),
        per_turn=turns,
    )


@dataclass(frozen=True)
class VoiceSessionDetail:
    """One session with the figures read beside it."""

    session: VoiceSession
    latency: SessionLatency
    usage: billing_selectors.SessionUsage


def voice_session_detail(*, organization: Organization, session_id: str | uuid.UUID) -> VoiceSessionDetail:
    session = voice_session_get(organization=organization, session_id=session_id)
    return VoiceSessionDetail(
        session=session,
        latency=voice_session_latency(session=session),
        usage=billing_selectors.session_usage(organization=organization, session_id=session.id),
    )


def _percentile(sorted_values: list[float], pct: int) -> float | None:
    if not sorted_values:
        return None
    # Nearest-rank: always a value that was actually observed.
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return round(sorted_values[rank - 1], 1)


def transcript_list(*, session: VoiceSession) -> QuerySet[TranscriptSegment]:
    return TranscriptSegment.objects.filter(session=session).order_by("start_offset_ms", "end_offset_ms", "id")


@dataclass(frozen=True)
class VoiceSessionTranscript:
    session: VoiceSession
    segments: QuerySet[TranscriptSegment]


def voice_session_transcript(*, organization: Organization, session_id: str | uuid.UUID) -> VoiceSessionTranscript:
    session = voice_session_get(organization=organization, session_id=session_id)
    return VoiceSessionTranscript(session=session, segments=transcript_list(session=session))


def catalog_voices() -> list[dict[str, Any]]:
    return [{"id": v.id, "gender": v.gender, "default": v.id == contracts.DEFAULT_VOICE} for v in catalog.voices()]


def catalog_models() -> list[dict[str, Any]]:
    """Named models with their status and current prices. Any OpenRouter ``vendor/model`` id is
    accepted besides these; it is priced by its own admin row or the OpenRouter default."""
    return [
        {
            "id": m.id,
            "status": m.status,
            "provider": m.provider,
            "message": m.message,
            "default": m.id == contracts.DEFAULT_LLM_MODEL,
            "prices": billing_selectors.prices_in_force(model=m.id) if m.status == "available" else [],
        }
        for m in catalog.llm_models()
    ]


def live_session_counts() -> dict[tuple[str, str], int]:
    """Live sessions of every organization by (transport, status), zeros included (for metrics)."""
    counts = {
        (str(transport), str(status)): 0
        for transport in contracts.Transport
        for status in (VoiceSession.Status.CREATED, VoiceSession.Status.ACTIVE)
    }
    rows = VoiceSession.objects.live().values_list("transport", "status").annotate(n=Count("id")).order_by()
    for transport, status, n in rows:
        counts[(transport, status)] = n
    return counts


def tool_signing_secret(*, organization: Organization) -> str:
    """The ``whsec_`` secret that signs the organization's tool calls (derived, never stored)."""
    return tools.tool_signing_secret(signing_key=settings.TOOL_SIGNING_KEY, organization_id=str(organization.pk))
