from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from callmissed.errors import handler404 as api_not_found

handler400 = "callmissed.errors.handler400"
handler403 = "callmissed.errors.handler403"
handler404 = "callmissed.errors.handler404"
handler500 = "callmissed.errors.handler500"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("v1/", include("voice.api.urls")),
    path("v1/", include("billing.api.urls")),
    path("v1/schema", SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[]), name="schema"),
    path(
        "v1/docs",
        SpectacularSwaggerView.as_view(url_name="schema", authentication_classes=[], permission_classes=[]),
        name="docs",
    ),
    path(
        "v1/redoc",
        SpectacularRedocView.as_view(url_name="schema", authentication_classes=[], permission_classes=[]),
        name="redoc",
    ),
    path("", include("dashboard.urls")),
    # Unknown API paths answer with the error envelope even when DEBUG shows HTML 404 pages elsewhere.
    re_path(r"^v1/", api_not_found),
]
