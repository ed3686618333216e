"""The playground: talk to the agent from the dashboard, as the logged-in user, never with a key.

The page itself is static markup plus ``static/dashboard/playground.js``; it reads the catalog from
the public ``/v1/catalog/*`` endpoints and asks this module for credentials, each call answered in
the API's error envelope: a single-use ticket for the legacy WebSocket, or a LiveKit session
(``ws_url`` and ``token``) when the page talks through a LiveKit room. Both endpoints take the
dashboard's session cookie and its CSRF token, so another site cannot mint either.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.models import User
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.authentication import SessionAuthentication
from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors as account_selectors
from accounts import services as account_services
from accounts.models import Organization
from agent_worker import contracts
from dashboard.views import organization_required
from voice import services as voice_services
from voice.api.views import VoiceSessionCreateApi
from voice.config import SessionConfigSerializer

# The rate the page captures and plays at: what the offline and Sarvam STT take without resampling.
PLAYGROUND_SAMPLE_RATE = 16000


@organization_required
def playground(request: HttpRequest, organization: Organization) -> HttpResponse:
    context = {
        "sample_rate": PLAYGROUND_SAMPLE_RATE,
        # The LiveKit mode is offered when the server names a LiveKit deployment to join.
        "livekit_url": settings.LIVEKIT_URL,
    }
    response = render(request, "dashboard/playground.html", context)
    response.csp_override = {"connect-src": _connect_sources(request)}  # type: ignore[attr-defined]
    return response


def _connect_sources(request: HttpRequest) -> str:
    """The page's sockets: our own WebSocket (``'self'`` does not cover ws: in every browser) and
    the LiveKit server's signal connection, whose failure livekit-client diagnoses over http(s)."""
    sources = ["'self'", f"{'wss' if request.is_secure() else 'ws'}://{request.get_host()}"]
    if settings.LIVEKIT_URL:
        livekit = urlsplit(settings.LIVEKIT_URL)
        http = {"ws": "http", "wss": "https"}.get(livekit.scheme, livekit.scheme)
        sources += [f"{livekit.scheme}://{livekit.netloc}", f"{http}://{livekit.netloc}"]
    return " ".join(dict.fromkeys(sources))


@extend_schema(exclude=True)  # the dashboard's own endpoints, not part of the public API
class _DashboardApi(APIView):
    authentication_classes = [SessionAuthentication]  # enforces the CSRF token on every POST
    permission_classes = [IsAuthenticated]

    @staticmethod
    def organization(request: Request) -> Organization:
        organization = account_selectors.organization_for_user(user=request.user)
        if organization is None:
            raise PermissionDenied("Your account does not belong to an organization yet.")
        return organization


class PlaygroundTicketCreateApi(_DashboardApi):
    """A ticket for one ``/ws/voice-agent?ticket=…`` connection as the logged-in user."""

    def post(self, request: Request) -> Response:
        organization = self.organization(request)
        assert isinstance(request.user, User)  # IsAuthenticated let only a signed-in user through
        minted = account_services.socket_ticket_create(user=request.user, organization=organization)
        return Response(
            {"ticket": minted.plaintext, "expires_at": minted.expires_at, "ws_path": "/ws/voice-agent"},
            status=status.HTTP_201_CREATED,
        )


class PlaygroundSessionCreateApi(_DashboardApi):
    """A LiveKit session, as ``POST /v1/voice/sessions`` makes one, for the page to join."""

    def post(self, request: Request) -> Response:
        serializer = SessionConfigSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        created = voice_services.voice_session_create(
            organization=self.organization(request),
            config=dict(serializer.validated_data),
            transport=contracts.Transport.LIVEKIT,
        )
        return Response(VoiceSessionCreateApi.OutputSerializer(created).data, status=status.HTTP_201_CREATED)
