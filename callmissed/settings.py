"""CallMissed settings: one module, every value from the environment with a developer default.

Unset ``DATABASE_URL`` → SQLite; unset ``REDIS_URL`` → in-memory channel layer, local-memory
cache and eager Celery; unset provider keys → offline speech and a scripted LLM.
``DJANGO_ENV=production`` refuses unsafe values instead of defaulting them.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from redis.exceptions import ConnectionError as RedisConnectionError

from agent_worker import logs
from agent_worker.provider_settings import SpeechMode
from agent_worker.settings import DEV_TOOL_SIGNING_KEY
from callmissed.config import DEV_SECRET_KEY, platform_settings, web_processes

BASE_DIR = Path(__file__).resolve().parent.parent

# The environment, read once and typed (callmissed/config.py); every value below comes from it.
_env = platform_settings()

_PRODUCTION = _env.django_env == "production"

SECRET_KEY = _env.django_secret_key
DEBUG = _env.django_debug if _env.django_debug is not None else not _PRODUCTION
_DEV_HOSTS = ["localhost", "127.0.0.1", "[::1]", "testserver"]
ALLOWED_HOSTS = (
    _env.django_allowed_hosts if _env.django_allowed_hosts is not None else [] if _PRODUCTION else _DEV_HOSTS
)
CSRF_TRUSTED_ORIGINS = _env.django_csrf_trusted_origins

if _PRODUCTION:
    if SECRET_KEY == DEV_SECRET_KEY or len(SECRET_KEY) < 50:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set to a long random value in production")
    if DEBUG:
        raise ImproperlyConfigured("DJANGO_DEBUG must be off in production")
    if not ALLOWED_HOSTS:
        raise ImproperlyConfigured("DJANGO_ALLOWED_HOSTS must be set in production")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "accounts",
    "voice",
    "billing",
    "webhooks",
    "dashboard",
]

MIDDLEWARE = [
    "callmissed.middleware.RequestIdMiddleware",
    "callmissed.metrics.RequestMetricsMiddleware",
    "callmissed.health.OperatorEndpointsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "callmissed.csp.ContentSecurityPolicyMiddleware",
    "callmissed.middleware.ProductErrorPageMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "callmissed.middleware.SyncStackMiddleware",  # keep last: the stack runs in one thread
]

ROOT_URLCONF = "callmissed.urls"
ASGI_APPLICATION = "callmissed.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        _env.database_url or f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=_env.database_conn_max_age,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and _env.database_pool_max_size > 0:
    if _env.database_conn_max_age:
        raise ImproperlyConfigured(
            "DATABASE_CONN_MAX_AGE must be 0 while DATABASE_POOL_MAX_SIZE pools connections "
            "(set DATABASE_POOL_MAX_SIZE=0 to keep connections per thread instead)"
        )
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": min(_env.database_pool_min_size, _env.database_pool_max_size),
        "max_size": _env.database_pool_max_size,
        "timeout": _env.database_pool_timeout_seconds,
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
LOGIN_URL = "dashboard:login"
LOGIN_REDIRECT_URL = "dashboard:overview"
LOGOUT_REDIRECT_URL = "dashboard:login"

# --- Redis: channel layer, cache, Celery broker ------------------------------------------
REDIS_URL = _env.redis_url

if REDIS_URL:
    # redis-py 8 reads with a 5 s socket timeout by default, which kills every idle consumer's
    # blocking receive (channels_redis#422): the layer's connections wait without one.
    # A Redis that is down must cost a request a fraction of a second, not hang it: connects
    # give up fast everywhere; the layer only keeps reads unbounded. After a Redis restart the
    # layer's pooled connections are dead: a command that meets one reconnects and runs again
    # instead of failing (the first REST DELETE after a restart would not reach its call).
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [
                    {
                        "address": REDIS_URL,
                        "socket_timeout": None,
                        "socket_connect_timeout": 1,
                        "retry_on_error": [RedisConnectionError],
                    }
                ]
            },
        }
    }
    # The cache holds only rate-limit counters, which fail open (accounts/throttling.py).
    CACHES = {
        "default": {
            "BACKEND": "callmissed.cache.ProcessRedisCache",  # one connection pool per process
            "LOCATION": REDIS_URL,
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# Server processes behind the port (callmissed/serve.py). Each holds its own calls: a call's control
# messages (REST DELETE, billing stops) reach it from any process only through Redis.
WEB_CONCURRENCY = web_processes(_env.web_concurrency, production=_PRODUCTION)
if WEB_CONCURRENCY > 1 and "InMemory" in CHANNEL_LAYERS["default"]["BACKEND"]:
    raise ImproperlyConfigured(
        f"WEB_CONCURRENCY={WEB_CONCURRENCY} needs REDIS_URL: with the in-memory channel layer a call "
        "could not be ended from another server process, and each process would keep its own rate limits"
    )

CELERY_BROKER_URL = _env.celery_broker_url or REDIS_URL or "memory://"
CELERY_TASK_ALWAYS_EAGER = _env.celery_task_always_eager if _env.celery_task_always_eager is not None else not REDIS_URL
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Every countdown/ETA we use stays well below this, so Redis never redelivers a task early.
# The socket options let the worker notice a dead or silent Redis (its blocking pop waits 1 s, so
# reads get longer than that) and reconnect, and keep a publisher from hanging on one.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": 3600,
    "socket_connect_timeout": 2,
    "socket_timeout": 2,
    "socket_keepalive": True,
    "health_check_interval": 10,
}
# The worker keeps reconnecting for as long as the broker is away (Celery gives up after 100
# attempts by default and exits), at startup too; beat's reaper, meter flushes and Stripe event
# application resume by themselves. Tasks are idempotent, so a task cut off by a connection loss
# is cancelled and redelivered rather than left unacknowledgeable.
CELERY_BROKER_CONNECTION_RETRY = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
# Publishing from a request retries once, then gives up: what it queued is swept from the
# database (callmissed/queueing.py).
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {
    "voice-reap-sessions": {"task": "voice.reap_sessions", "schedule": timedelta(seconds=30)},
    "voice-clear-idempotency-responses": {
        "task": "voice.clear_idempotency_responses",
        "schedule": timedelta(minutes=5),
    },
    "billing-flush-meter-events": {"task": "billing.flush_meter_events", "schedule": timedelta(minutes=5)},
    "billing-reconcile-stripe": {"task": "billing.reconcile_stripe", "schedule": timedelta(hours=1)},
    "webhooks-deliver-due": {"task": "webhooks.deliver_due", "schedule": timedelta(seconds=30)},
    "webhooks-prune-deliveries": {"task": "webhooks.prune_deliveries", "schedule": timedelta(hours=6)},
}

# --- API -----------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["accounts.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["callmissed.parsers.StrictJSONParser"],
    "DEFAULT_THROTTLE_CLASSES": ["accounts.throttling.ApiKeyRateThrottle"],
    "EXCEPTION_HANDLER": "callmissed.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}

API_RATE_LIMIT = _env.api_rate_limit
API_KEY_CACHE_SECONDS = _env.api_key_cache_seconds
API_MAX_BODY_BYTES = _env.api_max_body_bytes

SPECTACULAR_SETTINGS = {
    "TITLE": "CallMissed API",
    "DESCRIPTION": "Hosted voice agents for Indian languages: sessions, transcripts, usage.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Paths whose operations are separate view classes (callmissed.routing) documented per class.
    "DEFAULT_GENERATOR_CLASS": "callmissed.openapi.SchemaGenerator",
    # Sessions and webhook deliveries both have a "status": each keeps a name of its own.
    "ENUM_NAME_OVERRIDES": {
        "StatusEnum": "voice.models.VoiceSession.Status",
        "WebhookEventTypeEnum": "webhooks.models.EventType",
        "WebhookDeliveryStatusEnum": "webhooks.models.DeliveryStatus",
    },
    # drf-spectacular's default enum hook, then the error responses every operation can give.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "callmissed.openapi.add_error_responses",
    ],
}

# --- Voice sessions ------------------------------------------------------------------------
LIVEKIT_URL = _env.livekit_url
LIVEKIT_API_URL = _env.livekit_api_url
LIVEKIT_API_KEY = _env.livekit_api_key
LIVEKIT_API_SECRET = _env.livekit_api_secret
LIVEKIT_AGENT_NAME = _env.livekit_agent_name
LIVEKIT_TOKEN_TTL_SECONDS = _env.livekit_token_ttl_seconds
SESSION_JOIN_TIMEOUT_SECONDS = _env.session_join_timeout_seconds
SESSION_LOST_GRACE_SECONDS = _env.session_lost_grace_seconds
IDEMPOTENCY_KEY_TTL_HOURS = _env.idempotency_key_ttl_hours
PROVIDER_MAX_LIVE_SESSIONS = _env.provider_max_live_sessions
# Conversations the platform runs itself (the legacy WebSocket) time out like the agent worker's.
AGENT_IDLE_TIMEOUT_SECONDS = _env.agent_idle_timeout_seconds
AGENT_GOODBYE_LEAD_SECONDS = _env.agent_goodbye_lead_seconds
LEGACY_WS_CONFIG_TIMEOUT_SECONDS = _env.legacy_ws_config_timeout_seconds
LEGACY_WS_MAX_FRAME_SECONDS = _env.legacy_ws_max_frame_seconds
LEGACY_WS_MAX_AHEAD_SECONDS = _env.legacy_ws_max_ahead_seconds
LEGACY_WS_UNDERRUN_FILL_SECONDS = _env.legacy_ws_underrun_fill_seconds
LEGACY_WS_INPUT_BUFFER_SECONDS = _env.legacy_ws_input_buffer_seconds
LEGACY_WS_USAGE_REPORT_SECONDS = _env.legacy_ws_usage_report_seconds
LEGACY_WS_SESSION_CHECK_SECONDS = _env.legacy_ws_session_check_seconds
TOOL_SIGNING_KEY = _env.tool_signing_key
TOOL_FILLER_DELAY_SECONDS = _env.tool_filler_delay_seconds
TOOLS_ALLOW_HTTP = _env.tools_allow_http

# Either dev value alone is enough to refuse: the secret mints room tokens and seals each
# session's prompt and tools (agent_worker/sealing.py), so "secret" with a real key is no safer.
if _PRODUCTION and (LIVEKIT_API_KEY == "devkey" or LIVEKIT_API_SECRET == "secret" or len(LIVEKIT_API_SECRET) < 32):
    raise ImproperlyConfigured(
        "LIVEKIT_API_KEY / LIVEKIT_API_SECRET must be set in production (the secret at least 32 characters)"
    )
if _PRODUCTION and (TOOL_SIGNING_KEY == DEV_TOOL_SIGNING_KEY or len(TOOL_SIGNING_KEY) < 32):
    raise ImproperlyConfigured("TOOL_SIGNING_KEY must be set to a long random value in production")

# --- Providers (unset keys → offline providers), as the agent worker reads them ---------------
PROVIDERS = _env.providers

# --- Billing -------------------------------------------------------------------------------
STRIPE_SECRET_KEY = _env.stripe_secret_key
STRIPE_WEBHOOK_SECRET = _env.stripe_webhook_secret
STRIPE_API_BASE = _env.stripe_api_base
STRIPE_METER_EVENT_NAME = _env.stripe_meter_event_name
BILLING_SIGNUP_CREDIT_USD = _env.billing_signup_credit_usd
BILLING_MAX_CONCURRENT_SESSIONS = _env.billing_max_concurrent_sessions
BILLING_CONCURRENCY_RETRY_AFTER_SECONDS = _env.billing_concurrency_retry_after_seconds
BILLING_LOW_BALANCE_USD = _env.billing_low_balance_usd

# --- Outbound calls to customer URLs (outbound/: webhooks, tool calls) ------------------------
OUTBOUND_ALLOWED_NETWORKS = _env.outbound_allowed_networks
WEBHOOK_TIMEOUT_SECONDS = _env.webhook_timeout_seconds
WEBHOOK_SECRETS_KEY = _env.webhook_secrets_key
WEBHOOK_DELIVERY_RETENTION_DAYS = _env.webhook_delivery_retention_days
WEBHOOK_MAX_ENDPOINTS = _env.webhook_max_endpoints

# --- Security ------------------------------------------------------------------------------
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = _PRODUCTION
CSRF_COOKIE_SECURE = _PRODUCTION
SECURE_SSL_REDIRECT = _env.django_secure_ssl_redirect if _env.django_secure_ssl_redirect is not None else _PRODUCTION
SECURE_HSTS_SECONDS = (
    _env.django_hsts_seconds if _env.django_hsts_seconds is not None else 31536000 if _PRODUCTION else 0
)
SECURE_HSTS_INCLUDE_SUBDOMAINS = _PRODUCTION
SECURE_HSTS_PRELOAD = _PRODUCTION
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"


# --- Dashboard throttles (per client address and per username; atomic counters in the cache) -----
LOGIN_RATE_LIMIT = _env.login_rate_limit
LOGIN_FAILURE_LIMIT = _env.login_failure_limit
SIGNUP_RATE_LIMIT = _env.signup_rate_limit
BILLING_SIGNUP_CREDITS_PER_IP = _env.billing_signup_credits_per_ip
CLIENT_IP_HEADER = _env.client_ip_header

# --- Content-Security-Policy (callmissed/csp.py) ----------------------------------------------------
CSP_FORM_ACTION_ORIGINS = _env.csp_form_action_origins

# --- Operations: health, metrics, logs, drain (callmissed/health.py, callmissed/metrics.py) --------
READYZ_CHECK_TIMEOUT_SECONDS = _env.readyz_check_timeout_seconds
METRICS_BEARER_TOKEN = _env.metrics_bearer_token
METRICS_ALLOWED_IPS = _env.metrics_allowed_ips
CELERY_METRICS_PORT = _env.celery_metrics_port
CELERY_METRICS_ADDRESS = _env.celery_metrics_address
DRAIN_WAIT_SECONDS = _env.drain_wait_seconds
LOGGING = logs.dict_config(level=_env.log_level, json_lines=_env.log_format == "json")

# --- Production refuses development parts ---------------------------------------------------------
# The embedded defaults serve one developer's process; in production each would fail quietly:
# SQLite under several server processes, rate limits and the channel layer per process, tasks run
# inside requests and lost with them, and the offline demo voice answering real callers.
if _PRODUCTION:
    if not _env.database_url or "sqlite" in DATABASES["default"]["ENGINE"]:
        raise ImproperlyConfigured("DATABASE_URL must point at PostgreSQL in production (SQLite is for development)")
    if not REDIS_URL or "locmem" in CACHES["default"]["BACKEND"] or "InMemory" in CHANNEL_LAYERS["default"]["BACKEND"]:
        raise ImproperlyConfigured(
            "REDIS_URL must be set in production: without it the cache (rate limits), the channel layer "
            "and the Celery broker live in one process"
        )
    if CELERY_TASK_ALWAYS_EAGER:
        raise ImproperlyConfigured("CELERY_TASK_ALWAYS_EAGER must be off in production (tasks would run in requests)")
    if CELERY_BROKER_URL.startswith("memory://"):
        raise ImproperlyConfigured("CELERY_BROKER_URL must be a real broker in production, not memory://")
    # Offline speech is allowed when asked for by name; the silent fallback of "auto" is not.
    if PROVIDERS.speech_providers is SpeechMode.AUTO and PROVIDERS.offline:
        raise ImproperlyConfigured(
            "SARVAM_API_KEY must be set in production, or SPEECH_PROVIDERS=offline to serve the offline voices"
        )
