from collections.abc import Callable
from datetime import UTC
from typing import Any

from django.db.models import QuerySet
from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.response import Response

from callmissed.errors import ValidationFailed
from callmissed.serializers import StrictSerializer

INVALID_CURSOR = "Invalid cursor: use the next or previous link of a page as it is."


def _invalid_cursor() -> ValidationFailed:
    return ValidationFailed(INVALID_CURSOR, fields={"cursor": [INVALID_CURSOR]})


class NewestFirstCursorPagination(CursorPagination):
    """Opaque cursors over (created_at, id) newest first: stable while new sessions arrive.

    A cursor is client input: one that does not decode to a position we could have issued (an
    aware ``created_at``) is a 400 on ``cursor``, never a database error."""

    ordering = ("-created_at", "-id")
    page_size = 20
    page_size_query_param = "limit"
    max_page_size = 100

    def decode_cursor(self, request: Any) -> Cursor | None:
        try:
            cursor = super().decode_cursor(request)
        except NotFound:
            raise _invalid_cursor() from None
        if cursor is None or cursor.position is None:
            return cursor
        try:
            position = parse_datetime(str(cursor.position))
            if position is None or position.tzinfo is None:
                raise _invalid_cursor()
            # The same text DRF makes from a row (str of an aware UTC datetime), so its
            # "same position as the last row" comparison still holds.
            normalized = str(position.astimezone(UTC))
        except (ValueError, OverflowError):
            raise _invalid_cursor() from None
        # The stubs type the position as int; DRF keeps the decoded text.
        return Cursor(offset=cursor.offset, reverse=cursor.reverse, position=normalized)  # type: ignore[arg-type]


def paginated(item: type[serializers.Serializer], name: str) -> serializers.Serializer:
    """The schema of one page of ``item``s."""
    return inline_serializer(
        name,
        {
            "next": serializers.URLField(allow_null=True),
            "previous": serializers.URLField(allow_null=True),
            "results": item(many=True),
        },
    )


class PageQuerySerializer(StrictSerializer):
    """A list's query string: its filters (a subclass's fields) and the paginator's parameters,
    declared here so the schema documents them and a bad one is a 400. ``validated_data`` holds
    the filters only; the paginator reads its parameters from the request."""

    cursor = serializers.CharField(required=False, help_text="A page's next or previous cursor, unchanged.")
    limit = serializers.IntegerField(required=False, min_value=1, max_value=100, help_text="Page size (default 20).")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        return {name: value for name, value in attrs.items() if name not in ("cursor", "limit")}


def page_response(
    items: QuerySet[Any],
    *,
    request: Any,
    view: Any,
    serializer: type[serializers.Serializer],
    before_shown: Callable[[list[Any]], bool] | None = None,
) -> Response:
    """One page of ``items``, newest first, in the shape ``paginated`` documents. ``before_shown``
    sees the page first; when it returns True (it changed some of them) the page is read again."""
    paginator = NewestFirstCursorPagination()
    page = paginator.paginate_queryset(items, request, view=view) or []
    if before_shown is not None and before_shown(page):
        page = paginator.paginate_queryset(items, request, view=view) or []
    return paginator.get_paginated_response(serializer(page, many=True).data)
