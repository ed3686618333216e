from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from voice.models import ProcessedEvent, TranscriptSegment, VoiceSession


class TranscriptSegmentInline(admin.TabularInline):
    model = TranscriptSegment
    extra = 0
    fields = ("start_offset_ms", "end_offset_ms", "role", "text", "language")
    readonly_fields = fields
    can_delete = False
    ordering = ["start_offset_ms", "end_offset_ms", "id"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(VoiceSession)
class VoiceSessionAdmin(admin.ModelAdmin):
    list_display = ["id", "organization", "status", "end_reason", "transport", "llm_model", "language", "created_at"]
    list_filter = ["status", "end_reason", "transport", "llm_model", "language"]
    search_fields = ["id", "room_name", "organization__name"]
    date_hierarchy = "created_at"
    # The stored first response of an Idempotency-Key holds a live room token: never on screen.
    exclude = ["idempotency_response"]
    readonly_fields = [f.name for f in VoiceSession._meta.fields if f.name != "idempotency_response"]
    inlines = [TranscriptSegmentInline]
    list_select_related = ["organization"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(ProcessedEvent)
class ProcessedEventAdmin(admin.ModelAdmin):
    list_display = ["event_id", "kind", "session", "processed_at"]
    list_filter = ["kind"]
    readonly_fields = ["event_id", "kind", "session", "processed_at"]
