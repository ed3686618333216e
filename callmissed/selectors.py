"""Reads every app's selectors share."""

from __future__ import annotations

import uuid
from typing import Any, TypeVar

from django.db.models import Model, QuerySet

from callmissed.errors import NotFound

M = TypeVar("M", bound=Model)


def get_or_not_found(rows: QuerySet[M], pk: Any, message: str) -> M:
    """The row of ``rows`` (already scoped to the caller) whose id is ``pk``, an id from a URL.

    An id that is not a UUID names no row: the same 404 as an unknown id or another organization's,
    raised before the query so the database never sees text it cannot cast."""
    try:
        key = uuid.UUID(str(pk))
    except ValueError:
        raise NotFound(message) from None
    row = rows.filter(pk=key).first()
    if row is None:
        raise NotFound(message)
    return row
