from django.urls import path

from callmissed.routing import Operations
from voice.api import catalog_views, limits_views, tools_views, views

urlpatterns = [
    path(
        "voice/sessions",
        Operations(post=views.VoiceSessionCreateApi, get=views.VoiceSessionListApi),
        name="voice-sessions",
    ),
    path(
        "voice/sessions/<str:session_id>",
        Operations(get=views.VoiceSessionRetrieveApi, delete=views.VoiceSessionDeleteApi),
        name="voice-session-detail",
    ),
    path(
        "voice/sessions/<str:session_id>/transcripts",
        views.VoiceSessionTranscriptApi.as_view(),
        name="voice-session-transcripts",
    ),
    path("catalog/voices", catalog_views.VoiceListApi.as_view(), name="catalog-voices"),
    path("catalog/languages", catalog_views.LanguageListApi.as_view(), name="catalog-languages"),
    path("catalog/models", catalog_views.ModelListApi.as_view(), name="catalog-models"),
    path("tools/signing-secret", tools_views.ToolSigningSecretApi.as_view(), name="tools-signing-secret"),
    path("billing/limits", limits_views.BillingLimitsApi.as_view(), name="billing-limits"),
]
