"""The agent worker's settings, and the definitions it shares with the platform.

Each process kind reads its environment once, into one typed object: the agent worker into
``WorkerSettings`` (``worker_settings()``), the platform into ``callmissed.config.PlatformSettings``,
which ``callmissed/settings.py`` turns into Django settings. Both extend ``SharedSettings``, so a
variable both read (the LiveKit server, the conversation's timing, the providers) is defined here
once. This module never imports Django. Every value has a default that serves a developer; an
empty variable counts as unset, and a bad value raises ``SettingsError`` naming the variable.
"""

from __future__ import annotations

import functools
import os
import tempfile
from typing import Annotated, Any, TypeVar

from pydantic import BeforeValidator, Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from agent_worker.provider_settings import ProviderSettings
from outbound.ssrf import parse_networks

DEFAULT_BROKER_URL = "redis://localhost:6379/0"
DEV_TOOL_SIGNING_KEY = "dev-insecure-tool-signing-key"  # production refuses it (callmissed/settings.py)

# Field names are the variables' names (matched case-insensitively); frozen: read once, never
# changed; an unknown keyword (a typo in a test) is an error.
# A limit of "inf" or "nan" would switch a check off without saying so: only finite numbers.
ENV_CONFIG = SettingsConfigDict(frozen=True, env_ignore_empty=True, extra="forbid", allow_inf_nan=False)


def _comma_list(value: object) -> object:
    return [item.strip() for item in value.split(",") if item.strip()] if isinstance(value, str) else value


# "a.example.com, b.example.com" rather than JSON.
CommaList = Annotated[list[str], NoDecode, BeforeValidator(_comma_list)]


def check_networks(value: list[str], info: ValidationInfo) -> list[str]:
    """A field validator's body for a list of CIDRs."""
    try:
        parse_networks(value)
    except ValueError as error:
        raise ValueError(f"{str(info.field_name).upper()} must be CIDRs: {error}") from None
    return value


class SettingsError(ValueError):
    """An environment variable holds a value its setting cannot take."""


class SharedSettings(BaseSettings):
    """What the platform and the agent worker both read. The platform mints tokens for this
    LiveKit server and runs legacy-socket conversations itself; the worker joins the rooms."""

    model_config = ENV_CONFIG

    livekit_url: str = "ws://localhost:7880"
    livekit_api_key: str = "devkey"
    livekit_api_secret: str = Field("secret", repr=False)
    livekit_agent_name: str = "callmissed-agent"
    # How long a caller may take to join: the platform's join deadline, the worker's wait.
    session_join_timeout_seconds: int = 60
    # A conversation nobody speaks in ends after this; the goodbye starts this long before the maximum.
    agent_idle_timeout_seconds: float = 120.0
    agent_goodbye_lead_seconds: float = 5.0
    # On SIGTERM: no new calls; live ones go on this long, then end with a spoken goodbye
    # (agent_worker/drain.py), instead of the hour the longest session may last.
    drain_wait_seconds: float = Field(30.0, ge=0)
    # Each organization's tool signing secret is derived from this key (agent_worker/tools.py),
    # so both the platform (which shows it) and the worker (which signs with it) know it.
    tool_signing_key: str = Field(DEV_TOOL_SIGNING_KEY, repr=False)
    # A tool call still running after this long gets a short spoken filler; 0 turns it off.
    tool_filler_delay_seconds: float = Field(1.5, ge=0)
    # Customer URLs (webhooks, tool calls) may resolve only to public addresses, except inside
    # these CIDRs (e.g. 127.0.0.1/32 for a developer's local receiver; the tests' loopback
    # receivers). Each one opens the SSRF guard (outbound/ssrf.py) to that network.
    outbound_allowed_networks: CommaList = []

    @field_validator("outbound_allowed_networks")
    @classmethod
    def _networks(cls, value: list[str], info: ValidationInfo) -> list[str]:
        return check_networks(value, info)

    providers: ProviderSettings = Field(default_factory=lambda: load(ProviderSettings))


class WorkerSettings(SharedSettings):
    # The worker's health/status HTTP port (livekit-agents serves it in production mode).
    agent_http_port: int = 8081
    # Prometheus metrics of the worker and its job processes (pipeline latency, provider errors,
    # livekit-agents' own); the job processes write to this directory, which the worker's metrics
    # server adds up (it is wiped at start). Unset: a directory under the system's temp dir.
    agent_metrics_port: int = 9100
    prometheus_multiproc_dir: str = ""
    # Where the worker's events go: Django's Celery broker.
    celery_broker_url: str = ""
    redis_url: str = ""

    @property
    def metrics_dir(self) -> str:
        return self.prometheus_multiproc_dir or os.path.join(tempfile.gettempdir(), "callmissed-agent-metrics")

    @property
    def broker_url(self) -> str:
        return self.celery_broker_url or self.redis_url or DEFAULT_BROKER_URL


S = TypeVar("S", bound=BaseSettings)

_MUST_BE = {
    "bool_parsing": "a boolean (true/false)",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "decimal_parsing": "a decimal number",
}


def load(cls: type[S], **values: Any) -> S:
    """Read ``cls`` from the environment (``values`` override it); a bad value raises
    ``SettingsError`` with one line per variable, named as it is set."""
    try:
        return cls(**values)
    except ValidationError as error:
        lines = []
        for problem in error.errors():
            name = ".".join(str(part) for part in problem["loc"]).upper()
            expected = _MUST_BE.get(problem["type"])
            if expected:
                lines.append(f"{name} must be {expected}, got {problem['input']!r}")
            elif problem["type"] == "value_error":  # a rule across variables states its own names
                lines.append(str(problem.get("ctx", {}).get("error", problem["msg"])))
            else:
                lines.append(f"{name}: {problem['msg']}")
        raise SettingsError("; ".join(lines)) from None


@functools.cache
def worker_settings() -> WorkerSettings:
    """The worker process's settings, read from the environment on first use."""
    return load(WorkerSettings)
