"""The platform's environment, typed: read once by ``callmissed/settings.py`` into Django settings.

Every variable the platform reads is a field here (its name, matched case-insensitively), with a
default that serves a developer; what the agent worker reads too comes from
``agent_worker.settings.SharedSettings``. ``None`` means unset where the default depends on other
values (production, Redis), which settings.py resolves.
"""

from __future__ import annotations

import math
import os
from decimal import Decimal
from pathlib import Path
from typing import Literal

from django.core.exceptions import ImproperlyConfigured
from pydantic import Field, ValidationInfo, field_validator

from agent_worker.settings import CommaList, SettingsError, SharedSettings, check_networks, load
from callmissed.rates import parse_rate

DEV_SECRET_KEY = "dev-insecure-callmissed-secret-key-change-me-in-production-0123456789"


class PlatformSettings(SharedSettings):
    django_env: str = "development"  # "production" refuses unsafe values (settings.py)
    django_secret_key: str = Field(DEV_SECRET_KEY, repr=False)
    django_debug: bool | None = None  # unset: on in development, off in production
    django_allowed_hosts: CommaList | None = None  # unset: local names in development
    django_csrf_trusted_origins: CommaList = []
    django_secure_ssl_redirect: bool | None = None  # unset: on in production
    django_hsts_seconds: int | None = None  # unset: a year in production
    log_level: str = "INFO"
    # Server processes behind the one port (callmissed/serve.py): legacy calls run in the server
    # process, so a machine's cores serve them only with a process each. Unset: one per CPU in
    # production, one in development (`make run`). More than one needs REDIS_URL.
    web_concurrency: int | None = Field(None, ge=1)

    database_url: str = ""  # unset: SQLite in the checkout
    # Persistent connections; 0 with pooling (Django's pool requires it). Under ASGI each request
    # runs in a thread of its own, so persistence without a pool holds one connection per thread.
    database_conn_max_age: int = 0
    # PostgreSQL connections per process, pooled by psycopg_pool and shared by its threads: the
    # most the process ever opens (a request waits for a free one). 0 turns pooling off.
    database_pool_max_size: int = 8
    database_pool_min_size: int = 1
    # How long a request waits for a pooled connection before answering 503 (never a 500).
    database_pool_timeout_seconds: float = 10.0
    redis_url: str = ""  # unset: in-process channel layer, cache and eager Celery
    celery_broker_url: str = ""  # unset: REDIS_URL
    celery_task_always_eager: bool | None = None  # unset: on without Redis

    api_rate_limit: str = "600/min"
    # How long a process may answer a key from memory (accounts/key_cache.py): a revocation reaches
    # every process at its next request through the cache's key generation; this bounds it should
    # that cache have been down at the revocation. 0: every request reads its key from the database.
    api_key_cache_seconds: int = Field(30, ge=0)
    # Largest JSON body the API reads (413 above): an 8000-character prompt JSON-escaped is ~48 KB.
    api_max_body_bytes: int = 256 * 1024

    livekit_api_url: str = ""  # the server API (Twirp); unset: LIVEKIT_URL over http(s)
    livekit_token_ttl_seconds: int = 600
    session_lost_grace_seconds: int = 120
    idempotency_key_ttl_hours: int = 24
    # Sarvam caps concurrent streams per account: live sessions above this get 503 at create.
    provider_max_live_sessions: int = 20
    # Session tools may use plain http URLs (a developer's local receiver, the tests'); off: https only.
    tools_allow_http: bool = False

    stripe_secret_key: str = Field("", repr=False)
    stripe_webhook_secret: str = Field("", repr=False)
    stripe_api_base: str = ""  # loopback fake in tests; empty = Stripe
    stripe_meter_event_name: str = "callmissed_usage_microusd"
    # Every new organization starts prepaid with this credit (USD), enough to try the product.
    billing_signup_credit_usd: Decimal = Decimal("5.00")
    billing_max_concurrent_sessions: int = 10
    billing_concurrency_retry_after_seconds: int = 30
    # A prepaid balance falling below this (USD) sends the billing.low_balance webhook.
    billing_low_balance_usd: Decimal = Decimal("1.00")
    webhook_timeout_seconds: int = 10  # per delivery attempt
    # Encrypts endpoints' signing secrets at rest; empty: derived from DJANGO_SECRET_KEY.
    webhook_secrets_key: str = Field("", repr=False)
    # Settled deliveries and their attempts are kept this long (dashboard, API, redelivery).
    webhook_delivery_retention_days: int = 30
    # Endpoints one organization may register: each event fans out to all of them.
    webhook_max_endpoints: int = Field(20, ge=1)

    # Dashboard throttles, per client address and per username (atomic counters in the cache).
    login_rate_limit: str = "10/min"  # login attempts per client address
    login_failure_limit: str = "5/15min"  # failed logins per username
    signup_rate_limit: str = "5/hour"  # accounts created per client address
    # Organizations per client address per UTC day that get the signup credit (and once per email).
    billing_signup_credits_per_ip: str = "2/day"
    # Empty: throttles count REMOTE_ADDR. Behind a proxy you run, the header it sets (its last entry
    # is used), e.g. X-Forwarded-For; never set it when clients can reach the server directly.
    client_ip_header: str = ""
    # Where forms may lead besides our own pages: the top-up form's redirect to Stripe Checkout.
    csp_form_action_origins: CommaList = ["https://checkout.stripe.com"]

    # The legacy WebSocket's limits (voice/legacy/limits.py).
    legacy_ws_config_timeout_seconds: float = 10.0
    legacy_ws_max_frame_seconds: float = 1.0
    # How far the client's audio may run ahead of the wall clock (bursts, network jitter).
    legacy_ws_max_ahead_seconds: float = 2.0
    # How far behind the client may fall before the gap is filled with silence.
    legacy_ws_underrun_fill_seconds: float = 0.5
    # Caller audio the pipeline may fall behind by before the oldest is dropped.
    legacy_ws_input_buffer_seconds: float = 3.0
    legacy_ws_usage_report_seconds: float = 5.0
    # How often a call reads its own row, so one ended elsewhere stops even if the control
    # message to its socket was lost.
    legacy_ws_session_check_seconds: float = 2.0

    # Operations (callmissed/health.py, callmissed/metrics.py, agent_worker/logs.py).
    # Each /readyz dependency check (database, cache, channel layer, broker) gives up after this.
    readyz_check_timeout_seconds: float = Field(2.0, gt=0)
    # /metrics answers a scraper that sends "Authorization: Bearer <this>" or calls from these networks.
    metrics_bearer_token: str = Field("", repr=False)
    metrics_allowed_ips: CommaList = ["127.0.0.1/32", "::1/128"]
    # The Celery worker's own /metrics port (its task children aggregate through
    # PROMETHEUS_MULTIPROC_DIR); 0 = off.
    celery_metrics_port: int = 0
    # The address it listens on: loopback unless the scraper lives elsewhere (compose sets the
    # container's network). It has no token, so never an address the internet reaches.
    celery_metrics_address: str = "127.0.0.1"
    # "json": one JSON object per line with request, organization and session ids; "plain" to read
    # in a terminal. Secrets are redacted either way.
    log_format: Literal["json", "plain"] = "json"

    @field_validator("metrics_allowed_ips")
    @classmethod
    def _metrics_networks(cls, value: list[str], info: ValidationInfo) -> list[str]:
        return check_networks(value, info)

    @field_validator(
        "api_rate_limit",
        "login_rate_limit",
        "login_failure_limit",
        "signup_rate_limit",
        "billing_signup_credits_per_ip",
    )
    @classmethod
    def _a_rate(cls, value: str, info: ValidationInfo) -> str:
        try:
            parse_rate(value, setting=str(info.field_name).upper())
        except ImproperlyConfigured as error:
            raise ValueError(str(error)) from None
        return value


def web_processes(web_concurrency: int | None, *, production: bool) -> int:
    """How many server processes serve the port: ``WEB_CONCURRENCY``, else one per CPU this
    process may run on in production and one in development. Read by settings.py and by
    callmissed/serve.py, which starts them before Django is set up."""
    if web_concurrency is not None:
        return web_concurrency
    return usable_cpus() if production else 1


def usable_cpus(cgroup_cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The CPUs this process may use: its affinity, bounded by a cgroup v2 quota (a container's
    ``--cpus``, a pod's limit), which the affinity does not show: a 2-CPU container on a 64-core
    host would otherwise start 64 processes, each with its own database pool."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = cgroup_cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return cpus
    if quota == "max":
        return cpus
    try:
        return max(1, min(cpus, math.ceil(int(quota) / int(period))))
    except (ValueError, ZeroDivisionError):
        return cpus


def platform_settings() -> PlatformSettings:
    """Read the environment; a bad value stops start-up as Django's configuration error."""
    try:
        return load(PlatformSettings)
    except SettingsError as error:
        raise ImproperlyConfigured(str(error)) from None
