"""Signals about a session's lifecycle that higher apps act on (customer webhooks), so voice
never imports them. Sent inside the transaction that makes the change, with ``session``: a
receiver's writes commit or roll back with it (a receiver must contain its own failures)."""

from __future__ import annotations

from django.dispatch import Signal

# created → active.
session_started = Signal()
# The session is over: ``session.status`` is ``ended`` or ``failed`` with its end reason.
session_ended = Signal()
