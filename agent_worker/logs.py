"""Structured logs for every process: one JSON line per event, with who it concerns, and no secrets.

Django-free, so the agent worker and the platform (Daphne, Celery) log the same way. Context
fields (``request_id``, ``organization_id``, ``session_id``) live in a context variable: the
request middleware, the API key authentication, the legacy socket consumer and the worker's job
bind them, and every line logged inside that request, task or call carries them.

Secrets never leave the process in a log line: ``RedactSecrets`` masks anything shaped like one
of our keys or a provider's (``cm_``, ``whsec_``, ``sk_``/``sk-``, ``Bearer …``, JWTs such as
LiveKit tokens) and the configured secret values themselves, in the message, its arguments, the
traceback and extra fields, before any handler formats the record.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

CONTEXT_FIELDS = ("request_id", "organization_id", "session_id")
_context: ContextVar[dict[str, str] | None] = ContextVar("callmissed_log_context", default=None)


def _fields() -> dict[str, str]:
    return _context.get() or {}


REDACTED = "[redacted]"
# Shapes of secrets, whatever their source: our API keys and socket tickets, Standard Webhooks
# secrets, Stripe and OpenAI-style keys, bearer credentials, JSON Web Tokens (LiveKit access
# tokens are JWTs) and the password in a connection URL (redis://:pw@…, postgres://u:pw@…).
_SECRET_SHAPES = re.compile(
    r"""
    \bcmt?_[A-Za-z0-9_-]{6,}
    | (?<=://)[^/\s:@]*:[^@\s/]+(?=@)
    | \bwhsec_[A-Za-z0-9+/=_-]{6,}
    | \b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{6,}
    | \bsk[-_][A-Za-z0-9_-]{10,}
    | \bBearer\s+[A-Za-z0-9._~+/=-]+
    | \beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*
    """,
    re.VERBOSE,
)
# Settings whose values are secrets in any shape (a Sarvam key or a Clarifai PAT has no prefix).
SECRET_SETTINGS = (
    "DJANGO_SECRET_KEY",
    "LIVEKIT_API_SECRET",
    "SARVAM_API_KEY",
    "CLARIFAI_PAT",
    "OPENROUTER_API_KEY",
    "STRIPE_SECRET_KEY",
    "STRIPE_WEBHOOK_SECRET",
    "METRICS_BEARER_TOKEN",
    "WEBHOOK_SECRETS_KEY",
    "TOOL_SIGNING_KEY",
)
# Shorter values are development defaults ("secret") that would mask ordinary words.
_MIN_LITERAL = 8


def bind(**fields: str | None) -> None:
    """Attach fields to every later line of the current context (request, task, call)."""
    _context.set({**_fields(), **{k: str(v) for k, v in fields.items() if v}})


@contextlib.contextmanager
def bound(**fields: str | None) -> Iterator[None]:
    """Attach fields for the duration of a block, then restore what was there."""
    token = _context.set({**_fields(), **{k: str(v) for k, v in fields.items() if v}})
    try:
        yield
    finally:
        _context.reset(token)


def start_request(request_id: str) -> None:
    """A fresh context for one request: nothing bound by an earlier one in this context leaks in."""
    _context.set({"request_id": request_id})


def current() -> dict[str, str]:
    return dict(_fields())


def redact(text: str, literals: Iterable[str] = ()) -> str:
    for value in literals:
        if value:
            text = text.replace(value, REDACTED)
    return _SECRET_SHAPES.sub(REDACTED, text)


def _secret_values() -> tuple[str, ...]:
    values = (os.environ.get(name, "") for name in SECRET_SETTINGS)
    return tuple(sorted({v for v in values if len(v) >= _MIN_LITERAL}, key=len, reverse=True))


class RedactSecrets(logging.Filter):
    """Masks secrets in a record before any handler sees it; attach it to every handler."""

    def __init__(self, name: str = "", literals: Iterable[str] | None = None) -> None:
        super().__init__(name)
        self.literals = tuple(literals) if literals is not None else _secret_values()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what we can show
            message = f"{record.msg!r} {record.args!r}"
        record.msg = redact(message, self.literals)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.literals)
        for key, value in list(vars(record).items()):
            if key not in _RECORD_ATTRS and isinstance(value, str):
                setattr(record, key, redact(value, self.literals))
        return True


class AddContext(logging.Filter):
    """Copies the bound context onto the record, so a plain formatter can show it too."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _fields().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, context fields, extras, traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_fields())
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                line[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def dict_config(*, level: str = "INFO", json_lines: bool = True) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` both the platform (settings.LOGGING) and the worker use."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "redact": {"()": RedactSecrets},
            "context": {"()": AddContext},
        },
        "formatters": {
            "json": {"()": JsonFormatter},
            "plain": {
                "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
            },
        },
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "json" if json_lines else "plain",
                "filters": ["context", "redact"],
            }
        },
        "root": {"handlers": ["console"], "level": level},
        "loggers": {"django.db.backends": {"level": "WARNING"}},
    }


def install_on_root_handlers() -> None:
    """Add the context and redaction filters to every handler the root logger has now.

    livekit-agents sets up the worker's logging itself (JSON lines in production, and a queue
    handler in each job process that forwards records to the main process); this puts our
    fields and the redaction on those handlers. Safe to call more than once."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, AddContext) for f in handler.filters):
            handler.addFilter(AddContext())
        if not any(isinstance(f, RedactSecrets) for f in handler.filters):
            handler.addFilter(RedactSecrets())
