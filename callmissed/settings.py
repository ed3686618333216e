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

from callmissed.env import env_bool, env_int, env_list, env_str, parse_rate

BASE_DIR = Path(__file__).resolve().parent.parent

ENVIRONMENT = env_str("DJANGO_ENV", "development")
PRODUCTION = ENVIRONMENT == "production"

_DEV_SECRET_KEY = "dev-insecure-callmissed-secret-key-change-me-in-production-0123456789"
SECRET_KEY = env_str("DJANGO_SECRET_KEY", _DEV_SECRET_KEY)
DEBUG = env_bool("DJANGO_DEBUG", not PRODUCTION)
_DEV_HOSTS = ["localhost", "127.0.0.1", "[::1]", "testserver"]
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", [] if PRODUCTION else _DEV_HOSTS)
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

if PRODUCTION:
    if SECRET_KEY == _DEV_SECRET_KEY or len(SECRET_KEY) < 50:
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
    "dashboard",
]

MIDDLEWARE = [
    "callmissed.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "callmissed.csp.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
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
        env_str("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0),
    )
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
REDIS_URL = env_str("REDIS_URL", "")

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
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL or "memory://")
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", not REDIS_URL)
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

API_RATE_LIMIT = env_str("API_RATE_LIMIT", "600/min")
# Largest JSON body the API reads (413 above): an 8000-character prompt JSON-escaped is ~48 KB.
API_MAX_BODY_BYTES = env_int("API_MAX_BODY_BYTES", 256 * 1024)

SPECTACULAR_SETTINGS = {
    "TITLE": "CallMissed API",
    "DESCRIPTION": "Hosted voice agents for Indian languages: sessions, transcripts, usage.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # drf-spectacular's default enum hook, then the error responses every operation can give.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "callmissed.openapi.add_error_responses",
    ],
}

# --- Voice sessions ------------------------------------------------------------------------
LIVEKIT_URL = env_str("LIVEKIT_URL", "ws://localhost:7880")
LIVEKIT_API_URL = env_str("LIVEKIT_API_URL", "")  # defaults to LIVEKIT_URL with http(s)
LIVEKIT_API_KEY = env_str("LIVEKIT_API_KEY", "devkey")
LIVEKIT_API_SECRET = env_str("LIVEKIT_API_SECRET", "secret")
LIVEKIT_AGENT_NAME = env_str("LIVEKIT_AGENT_NAME", "callmissed-agent")
LIVEKIT_TOKEN_TTL_SECONDS = env_int("LIVEKIT_TOKEN_TTL_SECONDS", 600)
SESSION_JOIN_TIMEOUT_SECONDS = env_int("SESSION_JOIN_TIMEOUT_SECONDS", 60)
SESSION_LOST_GRACE_SECONDS = env_int("SESSION_LOST_GRACE_SECONDS", 120)
IDEMPOTENCY_KEY_TTL_HOURS = env_int("IDEMPOTENCY_KEY_TTL_HOURS", 24)
# Sarvam caps concurrent streams per account: live sessions above this get 503 at create.
PROVIDER_MAX_LIVE_SESSIONS = env_int("PROVIDER_MAX_LIVE_SESSIONS", 20)

if PRODUCTION and (LIVEKIT_API_KEY, LIVEKIT_API_SECRET) == ("devkey", "secret"):
    raise ImproperlyConfigured("LIVEKIT_API_KEY / LIVEKIT_API_SECRET must be set in production")

# --- Providers (unset keys → offline providers) ---------------------------------------------
SARVAM_API_KEY = env_str("SARVAM_API_KEY", "")
SARVAM_BASE_URL = env_str("SARVAM_BASE_URL", "https://api.sarvam.ai")
CLARIFAI_PAT = env_str("CLARIFAI_PAT", "")
CLARIFAI_BASE_URL = env_str("CLARIFAI_BASE_URL", "https://api.clarifai.com/v2/ext/openai/v1")
OPENROUTER_API_KEY = env_str("OPENROUTER_API_KEY", "")
OPENROUTER_BASE_URL = env_str("OPENROUTER_BASE_URL", "https://openrouter.ai/api/v1")

# --- Billing -------------------------------------------------------------------------------
STRIPE_SECRET_KEY = env_str("STRIPE_SECRET_KEY", "")
STRIPE_WEBHOOK_SECRET = env_str("STRIPE_WEBHOOK_SECRET", "")
STRIPE_API_BASE = env_str("STRIPE_API_BASE", "")  # loopback fake in tests; empty = Stripe
STRIPE_METER_EVENT_NAME = env_str("STRIPE_METER_EVENT_NAME", "callmissed_usage_microusd")
# Every new organization starts prepaid with this credit (USD), enough to try the product.
BILLING_SIGNUP_CREDIT_USD = env_str("BILLING_SIGNUP_CREDIT_USD", "5.00")
BILLING_MAX_CONCURRENT_SESSIONS = env_int("BILLING_MAX_CONCURRENT_SESSIONS", 10)
BILLING_CONCURRENCY_RETRY_AFTER_SECONDS = env_int("BILLING_CONCURRENCY_RETRY_AFTER_SECONDS", 30)

# --- Security ------------------------------------------------------------------------------
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = PRODUCTION
CSRF_COOKIE_SECURE = PRODUCTION
SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", PRODUCTION)
SECURE_HSTS_SECONDS = env_int("DJANGO_HSTS_SECONDS", 31536000 if PRODUCTION else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = PRODUCTION
SECURE_HSTS_PRELOAD = PRODUCTION
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# --- Dashboard throttles (per client address and per username; atomic counters in the cache) -----
LOGIN_RATE_LIMIT = env_str("LOGIN_RATE_LIMIT", "10/min")  # login attempts per client address
LOGIN_FAILURE_LIMIT = env_str("LOGIN_FAILURE_LIMIT", "5/15min")  # failed logins per username
SIGNUP_RATE_LIMIT = env_str("SIGNUP_RATE_LIMIT", "5/hour")  # accounts created per client address
# Organizations per client address per UTC day that get BILLING_SIGNUP_CREDIT_USD (and once per email).
BILLING_SIGNUP_CREDITS_PER_IP = env_str("BILLING_SIGNUP_CREDITS_PER_IP", "2/day")
for _name in (
    "API_RATE_LIMIT",
    "LOGIN_RATE_LIMIT",
    "LOGIN_FAILURE_LIMIT",
    "SIGNUP_RATE_LIMIT",
    "BILLING_SIGNUP_CREDITS_PER_IP",
):
    parse_rate(globals()[_name], setting=_name)
# Empty: throttles count REMOTE_ADDR. Behind a proxy you run, the header it sets (its last entry is used),
# e.g. X-Forwarded-For; never set it when clients can reach the server directly, or they pick their address.
CLIENT_IP_HEADER = env_str("CLIENT_IP_HEADER", "")

# --- Content-Security-Policy (callmissed/csp.py) ----------------------------------------------------
# Where forms may lead besides our own pages: the top-up form's redirect to Stripe Checkout.
CSP_FORM_ACTION_ORIGINS = env_list("CSP_FORM_ACTION_ORIGINS", ["https://checkout.stripe.com"])

# --- Production refuses development parts ---------------------------------------------------------
# The embedded defaults serve one developer's process; in production each would fail quietly:
# SQLite under several server processes, rate limits and the channel layer per process, tasks run
# inside requests and lost with them, and the offline demo voice answering real callers.
if PRODUCTION:
    if not env_str("DATABASE_URL") or "sqlite" in DATABASES["default"]["ENGINE"]:
        raise ImproperlyConfigured("DATABASE_URL must point at PostgreSQL in production (SQLite is for development)")
    if (
        not REDIS_URL
        or "locmem" in CACHES["default"]["BACKEND"]
        or "InMemory" in CHANNEL_LAYERS["default"]["BACKEND"]
    ):
        raise ImproperlyConfigured(
            "REDIS_URL must be set in production: without it the cache (rate limits), the channel layer "
            "and the Celery broker live in one process"
        )
    if CELERY_TASK_ALWAYS_EAGER:
        raise ImproperlyConfigured("CELERY_TASK_ALWAYS_EAGER must be off in production (tasks would run in requests)")
    if CELERY_BROKER_URL.startswith("memory://"):
        raise ImproperlyConfigured("CELERY_BROKER_URL must be a real broker in production, not memory://")
    # Offline speech is allowed when asked for by name; the silent fallback of "auto" is not.
    if env_str("SPEECH_PROVIDERS", "auto").strip().lower() == "auto" and not SARVAM_API_KEY:
        raise ImproperlyConfigured(
            "SARVAM_API_KEY must be set in production, or SPEECH_PROVIDERS=offline to serve the offline voices"
        )
