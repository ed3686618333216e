from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from callmissed import health
from callmissed.csp import csp_override
from callmissed.errors import handler404 as api_not_found
from dashboard import views as dashboard_views

handler400 = "callmissed.errors.handler400"
handler403 = "callmissed.errors.handler403"
handler404 = "callmissed.errors.handler404"
handler500 = "callmissed.errors.handler500"

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics_view, name="metrics"),
    path("admin/login/", dashboard_views.admin_login),  # the admin's login behind the dashboard's throttles
    path("admin/", admin.site.urls),
    path("v1/", include("voice.api.urls")),
    path("v1/", include("billing.api.urls")),
    path("v1/", include("webhooks.api.urls")),
    path(
        "v1/schema",
        SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[]),
        name="schema",
    ),
    path(
        "v1/docs",
        SpectacularSwaggerView.as_view(url_name="schema", authentication_classes=[], permission_classes=[]),
        name="docs",
    ),
    path(
        "v1/redoc",
        # Redoc's bundle injects style elements before it can learn a nonce; its scripts stay under
        # the nonce like every other page's. Its sidebar logo comes from Redocly's CDN, which the
        # policy keeps out (the page works offline): the blocked image hides itself on error.
        csp_override(style_src="'self' 'unsafe-inline'")(
            SpectacularRedocView.as_view(url_name="schema", authentication_classes=[], permission_classes=[])
        ),
        name="redoc",
    ),
    path("", include("dashboard.urls")),
    # Unknown API paths answer with the error envelope even when DEBUG shows HTML 404 pages elsewhere.
    re_path(r"^v1/", api_not_found, name="api-not-found"),
]
