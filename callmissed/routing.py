"""One view class per operation, several operations on one path.

Django routes a path to one view; ``Operations`` makes that view a switch on the HTTP method
over one ``APIView`` per operation, so ``POST /v1/voice/sessions`` and ``GET /v1/voice/sessions``
are two classes with their own serializers while the URL stays one. The schema generator
(``callmissed.openapi.EndpointEnumerator``) documents each operation from its own class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, HttpResponseBase
from rest_framework.views import APIView


class Operations:
    """The view of a path whose methods (``get=``, ``post=``, ``delete=`` …) are each served by one class.

    A method none of them serves (and ``OPTIONS``) goes to the first, which answers it as DRF does:
    authentication first, then 405. ``Allow`` names every method of the path, as it would if one
    class served them all."""

    # DRF's views are exempt from Django's CSRF middleware and apply CSRF themselves to session
    # authentication; a switch in front of them must not make the middleware check first.
    csrf_exempt = True

    def __init__(self, **views: type[APIView]) -> None:
        for method, view in views.items():
            if not hasattr(view, method):
                raise ImproperlyConfigured(f"{view.__name__} has no {method} handler")
        # Each method's DRF view (``.cls`` is its class), in the order given.
        self.handlers: dict[str, Callable[..., HttpResponseBase]] = {
            method.upper(): view.as_view() for method, view in views.items()
        }
        self._fallback = next(iter(self.handlers.values()))
        served = set(self.handlers) | ({"HEAD"} if "GET" in self.handlers else set())  # HEAD is answered by GET
        self._allow = ", ".join(m.upper() for m in APIView.http_method_names if m.upper() in served or m == "options")

    def __call__(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        method = "GET" if request.method == "HEAD" else (request.method or "")
        response = self.handlers.get(method, self._fallback)(request, *args, **kwargs)
        if response.has_header("Allow"):
            response["Allow"] = self._allow
        return response
