from __future__ import annotations

from datetime import timedelta

import factory
from django.utils import timezone

from accounts.tests.factories import OrganizationFactory
from agent_worker import contracts
from voice.models import TranscriptSegment, VoiceSession


class VoiceSessionFactory(factory.django.DjangoModelFactory[VoiceSession]):
    class Meta:
        model = VoiceSession

    organization = factory.SubFactory(OrganizationFactory)
    system_prompt = contracts.DEFAULT_SYSTEM_PROMPT
    voice = contracts.DEFAULT_VOICE
    language = contracts.DEFAULT_LANGUAGE
    llm_model = contracts.DEFAULT_LLM_MODEL
    tts_provider = contracts.DEFAULT_TTS_PROVIDER
    max_duration_seconds = contracts.DEFAULT_MAX_DURATION_SECONDS
    room_name = factory.Sequence(lambda n: f"cm_room_{n}")
    join_deadline = factory.LazyFunction(lambda: timezone.now() + timedelta(seconds=60))


class TranscriptSegmentFactory(factory.django.DjangoModelFactory[TranscriptSegment]):
    class Meta:
        model = TranscriptSegment

    session = factory.SubFactory(VoiceSessionFactory)
    event_id = factory.Sequence(lambda n: f"evt_{n}")
    role = "user"
    text = "hello"
    language = "en-IN"
    start_offset_ms = 0
    end_offset_ms = 500
