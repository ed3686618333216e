from rest_framework.pagination import CursorPagination


class NewestFirstCursorPagination(CursorPagination):
    """Opaque cursors over (created_at, id) newest first: stable while new sessions arrive."""

    ordering = ("-created_at", "-id")
    page_size = 20
    page_size_query_param = "limit"
    max_page_size = 100
