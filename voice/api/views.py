"""Thin adapters, one class per operation: parse input, call one service or selector, serialize."""

from __future__ import annotations

import re
from typing import Any

from django.http import HttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import request_api_key
from billing.api.serializers import SessionUsageSerializer
from callmissed.errors import ValidationFailed
from voice import lifecycle, selectors, services
from voice.api.pagination import PageQuerySerializer, page_response, paginated
from voice.api.serializers import (
    SUMMARY_FIELDS,
    SessionInResultSerializer,
    SessionSummarySerializer,
    TranscriptSegmentSerializer,
)
from voice.config import SessionConfigSerializer
from voice.models import TRANSPORT_CHOICES, VoiceSession

IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY_CHARS = 255
_METADATA_FILTER_KEY = re.compile(rf"^metadata\.({selectors.METADATA_KEY_PATTERN})$")


class VoiceSessionCreateApi(APIView):
    InputSerializer = SessionConfigSerializer

    # Reads ``services.CreatedSession``.
    @extend_schema_serializer(component_name="VoiceSessionCreateOutput")
    class OutputSerializer(SessionInResultSerializer):
        ws_url = serializers.CharField()
        token = serializers.CharField()

        class Meta(SessionInResultSerializer.Meta):
            fields = ["id", "ws_url", "token", "join_deadline", *SUMMARY_FIELDS[1:]]

    @classmethod
    def render(cls, created: services.CreatedSession) -> bytes:
        """The 201 body, which the service stores with an Idempotency-Key to answer its replays."""
        return JSONRenderer().render(cls.OutputSerializer(created).data)

    @extend_schema(
        operation_id="voice_sessions_create",
        request=InputSerializer,
        responses={201: OutputSerializer},
        parameters=[
            OpenApiParameter(
                IDEMPOTENCY_HEADER,
                str,
                OpenApiParameter.HEADER,
                description=(
                    "Retrying with the same key and body within the key's lifetime (24 h by default) answers "
                    "the first response again (header Idempotent-Replayed: true) while the session waits for "
                    "its caller, else 409."
                ),
            )
        ],
    )
    def post(self, request: Request) -> HttpResponse:
        key = request_api_key(request)
        idempotency_key = request.headers.get(IDEMPOTENCY_HEADER) or None
        if idempotency_key is not None and len(idempotency_key) > MAX_IDEMPOTENCY_KEY_CHARS:
            raise ValidationFailed(
                f"{IDEMPOTENCY_HEADER} must be at most {MAX_IDEMPOTENCY_KEY_CHARS} characters.",
                fields={IDEMPOTENCY_HEADER: [f"At most {MAX_IDEMPOTENCY_KEY_CHARS} characters."]},
            )
        if not isinstance(request.data, dict):
            raise ValidationFailed(
                "The body must be a JSON object.", fields={"non_field_errors": ["Expected an object."]}
            )
        body = self.InputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        created = services.voice_session_create(
            organization=key.organization,
            api_key=key,
            config=dict(body.validated_data),
            idempotency_key=idempotency_key,
            render=self.render,
        )
        if created.body:
            # The stored bytes of the first answer: a replay is byte-identical, token included.
            headers = {"Idempotent-Replayed": "true"} if created.replayed else {}
            return HttpResponse(
                created.body, status=status.HTTP_201_CREATED, content_type="application/json", headers=headers
            )
        return Response(self.OutputSerializer(created).data, status=status.HTTP_201_CREATED)


def _metadata_filters(params: Any) -> dict[str, str]:
    """``metadata.KEY=VALUE`` query parameters: every parameter whose name starts with ``metadata``."""
    filters: dict[str, str] = {}
    for name in params:
        if not name.startswith("metadata"):
            continue
        match = _METADATA_FILTER_KEY.match(name)
        if match is None or "__" in match.group(1):
            raise ValidationFailed(
                "Metadata filters look like metadata.KEY=VALUE.",
                fields={name: ["Use metadata.KEY=VALUE with KEY made of letters, digits, '-' and '_'."]},
            )
        filters[match.group(1)] = params.get(name)
    return filters


class VoiceSessionListApi(APIView):
    """The caller's sessions, newest first."""

    # The query string but its metadata.KEY filters (read by ``_metadata_filters``).
    class FilterSerializer(PageQuerySerializer):
        status = serializers.ChoiceField(choices=VoiceSession.Status.choices, required=False)
        transport = serializers.ChoiceField(choices=TRANSPORT_CHOICES, required=False)
        created_after = serializers.DateTimeField(required=False)
        created_before = serializers.DateTimeField(required=False)

    @extend_schema(
        operation_id="voice_sessions_list",
        parameters=[
            FilterSerializer,
            OpenApiParameter(
                "metadata.KEY",
                str,
                description="Only sessions whose metadata has KEY equal to this value (repeatable, any key).",
            ),
        ],
        responses={200: paginated(SessionSummarySerializer, "VoiceSessionPage")},
    )
    def get(self, request: Request) -> Response:
        organization = request_api_key(request).organization
        query = {name: value for name, value in request.query_params.items() if not name.startswith("metadata")}
        filters = self.FilterSerializer(data=query)
        filters.is_valid(raise_exception=True)
        if filters.validated_data.get("status") == VoiceSession.Status.FAILED:
            # Sessions past their join deadline are failed ones: this filter must find those the
            # reaper has not closed yet too (any other page shows them as they are found).
            lifecycle.voice_sessions_expire_unjoined(organization=organization)
        sessions = selectors.voice_session_list(
            organization=organization, metadata=_metadata_filters(request.query_params), **filters.validated_data
        )
        return page_response(
            sessions,
            request=request,
            view=self,
            serializer=SessionSummarySerializer,
            before_shown=lifecycle.voice_sessions_expire_shown,
        )


@extend_schema_serializer(component_name="SessionLatency")
class SessionLatencySerializer(serializers.Serializer):
    turns = serializers.IntegerField()
    first_audio_p50_ms = serializers.FloatField(allow_null=True)
    first_audio_p95_ms = serializers.FloatField(allow_null=True)
    per_turn = serializers.ListField(child=serializers.DictField())


class VoiceSessionRetrieveApi(APIView):
    """One session with its lifecycle and figures."""

    # Reads ``selectors.VoiceSessionDetail``.
    @extend_schema_serializer(component_name="VoiceSessionDetailOutput")
    class OutputSerializer(SessionInResultSerializer):
        providers = serializers.CharField(source="session.providers")
        error = serializers.CharField(source="session.error_message")
        latency = SessionLatencySerializer(read_only=True)
        usage = SessionUsageSerializer(read_only=True)

        class Meta(SessionInResultSerializer.Meta):
            fields = [*SUMMARY_FIELDS, "join_deadline", "providers", "error", "latency", "usage"]

    @extend_schema(operation_id="voice_sessions_retrieve", responses={200: OutputSerializer})
    def get(self, request: Request, session_id: str) -> Response:
        organization = request_api_key(request).organization
        detail = selectors.voice_session_detail(organization=organization, session_id=session_id)
        if lifecycle.voice_sessions_expire_shown([detail.session]):
            detail = selectors.voice_session_detail(organization=organization, session_id=session_id)
        return Response(self.OutputSerializer(detail).data)


class VoiceSessionDeleteApi(APIView):
    """Ends the session if it is live and drops its content."""

    @extend_schema(operation_id="voice_sessions_destroy", responses={204: None})
    def delete(self, request: Request, session_id: str) -> Response:
        key = request_api_key(request)
        session = selectors.voice_session_get(organization=key.organization, session_id=session_id)
        services.voice_session_delete(session=session, actor_key=key)
        return Response(status=status.HTTP_204_NO_CONTENT)


class VoiceSessionTranscriptApi(APIView):
    # Reads ``selectors.VoiceSessionTranscript``.
    @extend_schema_serializer(component_name="VoiceSessionTranscripts")
    class OutputSerializer(serializers.Serializer):
        session_id = serializers.UUIDField(source="session.id")
        status = serializers.CharField(source="session.status")
        segments = TranscriptSegmentSerializer(many=True)

    @extend_schema(operation_id="voice_sessions_transcripts", responses={200: OutputSerializer})
    def get(self, request: Request, session_id: str) -> Response:
        organization = request_api_key(request).organization
        transcript = selectors.voice_session_transcript(organization=organization, session_id=session_id)
        if lifecycle.voice_sessions_expire_shown([transcript.session]):
            transcript = selectors.voice_session_transcript(organization=organization, session_id=session_id)
        return Response(self.OutputSerializer(transcript).data)
