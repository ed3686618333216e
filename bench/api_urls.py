"""The platform's URLs plus ``/bench/bare``: the same server, middleware and process doing the
least a JSON endpoint can do, so the API's figures are ratios against what the stack costs."""

from django.http import HttpRequest, JsonResponse
from django.urls import path

from callmissed.urls import handler400, handler403, handler404, handler500  # noqa: F401
from callmissed.urls import urlpatterns as platform_urlpatterns


def bare(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


urlpatterns = [path("bench/bare", bare), *platform_urlpatterns]
