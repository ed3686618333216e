"""The one body parser of the REST API: bounded in size, strict about what JSON it accepts.

DRF's ``JSONParser`` reads the request stream itself, so Django's ``DATA_UPLOAD_MAX_MEMORY_SIZE``
never sees the body: a client could make a worker read and parse any amount (the ASGI handler has
already spooled it to a temporary file), and whatever Python's ``json`` accepts (``1e400``, NUL,
lone surrogates, thousands of nested arrays) surfaced later as a 500. This parser refuses an
oversized body before reading it (``Content-Length``) or after at most ``API_MAX_BODY_BYTES + 1``
bytes (chunked bodies), then parses with ``callmissed.jsonsafe``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO, Any

from django.conf import settings
from rest_framework.exceptions import ParseError, UnsupportedMediaType
from rest_framework.parsers import BaseParser
from rest_framework.renderers import JSONRenderer

from callmissed import jsonsafe
from callmissed.errors import PayloadTooLarge

_UTF8_NAMES = {"utf-8", "utf8", "us-ascii", "ascii"}


def max_body_bytes() -> int:
    return int(settings.API_MAX_BODY_BYTES)


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than {limit} bytes.")


def _declared_length(meta: Mapping[str, Any]) -> int | None:
    try:
        return int(meta.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None


class StrictJSONParser(BaseParser):
    media_type = "application/json"
    renderer_class = JSONRenderer

    def parse(self, stream: IO[bytes] | None, media_type: str | None = None, parser_context: Any = None) -> Any:
        context = parser_context or {}
        request = context.get("request")
        # JSON is UTF-8 (RFC 8259 §8.1); any other declared charset would be decoded wrongly.
        charset = (context.get("encoding") or "utf-8").lower()
        if charset not in _UTF8_NAMES:
            raise UnsupportedMediaType(
                media_type or self.media_type, detail=f"Unsupported charset {charset!r}: send UTF-8 JSON."
            )
        limit = max_body_bytes()
        if request is not None:
            declared = _declared_length(request.META)
            if declared is not None and declared > limit:
                raise too_large(limit)
        if stream is None:
            return {}
        data = stream.read(limit + 1)
        if len(data) > limit:
            raise too_large(limit)
        if not data:
            return {}
        try:
            return jsonsafe.loads(data)
        except jsonsafe.UnsafeJson as error:
            raise ParseError(str(error)) from None
